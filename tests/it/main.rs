//! llmux's integration tests: one binary, real processes on ephemeral
//! ports. `support` starts them; each module tests one concern.

mod support;

mod auth;
mod budget;
mod config_cli;
mod control;
mod dashboard;
mod defects;
mod errors;
mod fuzz_corpus;
mod hook_env;
mod hooks;
mod idle;
mod in_flight;
mod layers;
mod limits;
mod logs;
mod memory;
mod metrics;
mod multipart;
mod names;
mod protocol;
mod real;
mod reload;
mod remote;
mod residents;
mod routing;
mod scale_out;
mod scheduling;
mod sim_vs_real;
mod simulate;
mod soak;
mod switching;
mod systemd;
mod wait_feedback;
