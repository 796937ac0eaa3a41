//! The properties llmux's fuzz targets check, shared with the main crate's
//! `cargo test` (tests/it/fuzz_corpus.rs), which replays `corpus/` through
//! them on stable without libFuzzer.

mod checks;

pub use checks::{check_config, check_extract, check_multipart, check_request, check_rewrite, generated_cases, Target};
