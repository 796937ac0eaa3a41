//! Where the `llmux-standin` binary is, for llmux's integration tests and
//! benches (included by `tests/it/support/mod.rs` and
//! `benches/support/inproc.rs`; not part of the stand-in itself).
//!
//! `CARGO_BIN_EXE_*` only names binaries of the package under test, and the
//! stand-in is its own package, so it is looked up next to `llmux`: in a
//! workspace both land in the same profile directory (`target/debug`,
//! `target/release`). `cargo test` and `cargo build` at the root build it
//! (it is a default member); when it is missing, as after
//! `cargo test -p llmux` on a clean tree, it is built once with
//! `cargo build -p llmux-standin` into that same directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of `llmux-standin`, built first if it is not there.
pub fn standin_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_llmux")).parent().expect("llmux has a directory");
        let bin = dir.join(format!("llmux-standin{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            build(dir);
        }
        assert!(bin.exists(), "{} is missing after building it", bin.display());
        bin
    })
}

/// Builds the stand-in into `dir`, a profile directory such as
/// `target/debug` (or `target/<triple>/debug`).
fn build(dir: &Path) {
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("{} is not a cargo profile directory", dir.display()),
    };
    let target_dir = dir.parent().expect("a profile directory has a parent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "llmux-standin", "--profile", profile])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build -p llmux-standin");
    assert!(status.success(), "cargo build -p llmux-standin failed: {status}");
}
