//! The `llmux` binary: parse the command line, load the config, serve.
//! Everything else lives in the library.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    llmux::main_with_args(std::env::args_os().skip(1).collect())
}
