//! llmux's integration tests: one binary, real processes on ephemeral
//! ports. `support` starts them; each module tests one concern.

mod support;

mod config_cli;
mod errors;
mod real;
mod routing;
mod switching;
