//! The `llmux` binary: parse the command line, load the config, serve.
//! Everything else lives in the library.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages would back mimalloc's eagerly committed arena
    // with 2 MiB pages on first touch: measured idle RSS 10.5 MiB with,
    // 5 MiB without (docs/performance.md). Best effort.
    let _ = nix::sys::prctl::set_thp_disable(true);
    llmux::main_with_args(std::env::args_os().skip(1).collect())
}
