//! llmux's integration tests: one binary, real processes on ephemeral
//! ports. `support` starts them; each module tests one concern.

mod support;

mod auth;
mod config_cli;
mod errors;
mod fuzz_corpus;
mod limits;
mod real;
mod routing;
mod soak;
mod switching;
