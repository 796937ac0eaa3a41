//! llmux: one OpenAI-compatible endpoint in front of several model
//! backends that share one GPU, switching between them on demand.
//!
//! # A request's path
//!
//! 1. [`server`] accepts the connection, [`detect`] tells HTTP/1.1 from
//!    h2c (reading the first bytes and replaying them), and hyper hands
//!    each request to [`service::handle`].
//! 2. [`service`] answers `/health`, `/metrics` and `/v1/models` itself
//!    ([`api`], [`exposition`]) unless the body names a model, and hands
//!    `/llmux/*` to the control API ([`control`]); anything else has its
//!    body read whole ([`body`]), bounded by `max_body_bytes` and, with
//!    every other body held, by `limits.max_body_bytes_in_memory`
//!    ([`budget`]: one atomic each way), and its top-level `model` found by
//!    a simd-json scan ([`model`]), or a `multipart/form-data` body's
//!    `model` field ([`multipart`]), and looked up, model names and aliases
//!    alike, in the [`catalog`] (one `ArcSwap` load, one hash lookup);
//!    [`target`] decides which and gives the body to forward (only the
//!    name's bytes replaced for an `upstream_model`). `/upstream/{model}/...`
//!    names its model in the path instead.
//! 3. [`queue::admit`] admits it. If its model is the active one, that
//!    is [`routing::try_admit`]: one `ArcSwap` load and two atomics, no
//!    lock, no channel, no allocation (with a `max_in_flight`, a compare
//!    and swap bounded by it; past it the request queues, and each release
//!    wakes the longest waiting). Otherwise (a *miss*) the request
//!    queues for its model and tells the switch task through the
//!    [`inbox`]. With `stream_wait_feedback` on, a miss whose body asks
//!    for a stream is answered at once with an SSE body that comments
//!    while it waits and then carries the backend's stream
//!    ([`response::waiting`]).
//! 4. [`proxy`] forwards it to the model's [`backend`] (`127.0.0.1:<port>`,
//!    or its `url`, a host name resolved off the request path by
//!    [`resolve`]) over a pooled connection of the model's current
//!    [`routing::Incarnation`] (the one released last, from a lock-free
//!    LIFO [`pool`]); the response streams back
//!    frame by frame ([`response`]), its body holding the request's
//!    [`routing::InFlight`] guard until the last byte or a disconnect.
//! 5. Any failure is an [`error::Error`], which knows who is at fault and
//!    becomes OpenAI's error JSON in one place ([`response`]).
//! 6. The request counts itself in its model's preallocated
//!    [`metrics::ModelMetrics`]: status and first byte when the head goes
//!    out, duration when the response body is dropped; then, unless
//!    `access_log` is off, it writes its [`access`] line.
//!
//! # Switching
//!
//! Every switching decision is made by [`machine::Machine`], a sans-IO
//! state machine: events in (a request queued or left, a hook finished, a
//! drain ended, a timer fired, an operator's command, a reload, a refused
//! connection), actions out (gate, cut, publish, unpublish, run a hook,
//! fail the waiters, set a state, report), time passed in as a value
//! ([`clock`]). Its module docs state the protocol and its invariants;
//! its tests drive it with scripted events and virtual time.
//!
//! The switch task ([`switcher::run`]) executes it: it is the only code
//! that runs hooks ([`hooks`]) or publishes a [`routing::Routing`]
//! snapshot, it feeds back what happened, and it reports on the
//! [`events`] bus. [`server`] supervises it: if it dies, misses get 503
//! and `/health` says so. When llmux is PID 1 or a child subreaper,
//! [`reaper`] reaps the orphans hooks leave behind. [`state`] documents
//! who reads and writes each piece of shared state.
//!
//! ```text
//!  client ──► server ──► service ──► model scan ──► admit ──► proxy ──► backend
//!                                                    │  ▲
//!                                   miss: queue,     │  │ publish (ArcSwap)
//!                                   inbox ──────────►switch task ◄──► machine
//!                                                         └──► hooks (sh -c)
//! ```
//!
//! # Layers
//!
//! Each module imports only from the layers above it in this list (no
//! import cycle): leaves ([`config`], [`backend`], [`cli`], [`model`], [`multipart`],
//! [`clock`], [`machine`], [`events`], [`shutdown`], [`detect`],
//! [`procfs`], [`budget`], [`pool`], [`resolve`], [`systemd`], [`access`],
//! [`substitute`], [`resolved`], [`check`]); [`metrics`] primitives and
//! the recent [`history`]; [`inbox`], [`reaper`],
//! [`hooks`], [`error`], [`auth`], [`body`]; the [`catalog`]; [`proxy`],
//! [`routing`], [`target`]; [`state`]; [`queue`], [`switcher`]; [`response`];
//! [`exposition`], [`api`], [`control`]; [`service`]; [`server`].

// `deny`, not `forbid`: one function, `systemd::adopt_fd3`, takes
// ownership of the socket the service manager passed (see its SAFETY).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod api;
pub mod auth;
pub mod backend;
pub mod body;
pub mod budget;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod detect;
pub mod error;
pub mod events;
pub mod exposition;
pub mod history;
pub mod hooks;
pub mod inbox;
pub mod machine;
pub mod metrics;
pub mod model;
pub mod multipart;
pub mod pool;
pub mod procfs;
pub mod proxy;
pub mod queue;
pub mod reaper;
pub mod resolve;
pub mod resolved;
pub mod response;
pub mod routing;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod simulate;
pub mod state;
pub mod substitute;
pub mod switcher;
pub mod systemd;
pub mod target;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

pub use config::Config;
pub use server::{Exit, Server};

/// Runs the command line `args` (without the program name); what the
/// binary's `main` does.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let options = match cli::parse(args) {
        Ok(cli::Command::Help) => return print_and_exit(cli::HELP),
        Ok(cli::Command::Version) => return print_and_exit(&format!("llmux {}\n", env!("CARGO_PKG_VERSION"))),
        Ok(cli::Command::Check(options)) => return check(&options),
        Ok(cli::Command::SimulateHelp) => return print_and_exit(cli::SIMULATE_HELP),
        Ok(cli::Command::Simulate(options)) => return simulate(&options),
        Ok(cli::Command::Run(options)) => options,
        Err(e) => {
            eprintln!("llmux: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match load(&options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("llmux: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(options.log_format);
    // Before any thread starts: fd 3 is the service manager's socket.
    let inherited = match systemd::inherited_listener() {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("llmux: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    if options.subreaper {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("llmux: --subreaper: cannot become a child subreaper: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llmux: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = state::ConfigFile { path: options.config.clone(), port: options.port };
    let exit = runtime.block_on(serve_until_signal(config, file, inherited));
    // Hooks still running are killed as their tasks are dropped here.
    drop(runtime);
    exit
}

fn print_and_exit(text: &str) -> ExitCode {
    print!("{text}");
    ExitCode::SUCCESS
}

fn load(options: &cli::Options) -> Result<Config, config::ConfigError> {
    let mut config = Config::load(&options.config)?;
    if let Some(port) = options.port {
        config.port = port;
    }
    Ok(config)
}

/// `--check`: the config loads, and its hook files and directories are
/// there; with `--print`, the resolved config on stdout (the verdict on
/// stderr then, so the YAML can be piped).
fn check(options: &cli::Options) -> ExitCode {
    let config = match load(options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("llmux: {e}");
            return ExitCode::from(2);
        }
    };
    let problems = check::problems(&config);
    for problem in &problems {
        eprintln!("llmux: {}: {problem}", options.config.display());
    }
    if !problems.is_empty() {
        return ExitCode::from(2);
    }
    let ok = format!("{}: ok ({} models)", options.config.display(), config.models.len());
    if options.print {
        print!("{}", resolved::to_yaml_masked(&config));
        eprintln!("{ok}");
    } else {
        println!("{ok}");
    }
    ExitCode::SUCCESS
}

/// `llmux simulate`: prints the report, warnings on stderr.
fn simulate(options: &cli::SimulateOptions) -> ExitCode {
    match simulate::run(options) {
        Ok(printed) => {
            for w in &printed.warnings {
                eprintln!("llmux simulate: warning: {w}");
            }
            print!("{}", printed.output);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("llmux simulate: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        cli::LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        cli::LogFormat::Json => builder.json().try_init(),
    };
    // The access line is formatted by llmux in the same shape (cheaper by
    // an order of magnitude: see `access::line`).
    if installed.is_ok() {
        access::line::set_format(match format {
            cli::LogFormat::Text => access::line::Format::Text,
            cli::LogFormat::Json => access::line::Format::Json,
        });
    }
}

async fn serve_until_signal(
    config: Config,
    file: state::ConfigFile,
    inherited: Option<std::net::TcpListener>,
) -> ExitCode {
    // Only when orphans are given to llmux (PID 1, or --subreaper).
    let _reaper = reaper::start().map(AbortOnDrop);
    let activated = inherited.is_some();
    let bound = match inherited {
        Some(listener) => Server::from_listener(listener, config, Some(file)),
        None => Server::bind_from(config, Some(file)).await,
    };
    let server = match bound {
        Ok(server) => server,
        Err(e) => {
            eprintln!("llmux: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Handlers go in before the `listening` line: a signal sent as soon as
    // it appears must not find the default action (which ends the process).
    let signals = Signals::install();
    match server.local_addr() {
        Ok(addr) => {
            // The first stdout line, so scripts and tests can find the port.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
            if activated {
                tracing::info!(%addr, "listening on the socket passed by the service manager (host and port unused)");
            } else {
                tracing::info!(%addr, "listening");
            }
        }
        Err(e) => tracing::warn!("cannot read the bound address: {e}"),
    }
    if let Some(hup) = signals.hup {
        tokio::spawn(reload_on_sighup(std::sync::Arc::clone(server.shared()), hup));
    }
    let notifier = systemd::Notifier::from_env().map(std::sync::Arc::new);
    if let Some(notifier) = &notifier {
        tokio::spawn(notify_ready(std::sync::Arc::clone(server.shared()), std::sync::Arc::clone(notifier)));
    }
    let stopping = async {
        shutdown_signal(signals.term, signals.int).await;
        if let Some(notifier) = &notifier {
            notifier.notify("STOPPING=1");
        }
    };
    let exit = server.serve(stopping).await;
    if exit.clean {
        tracing::info!("shut down cleanly");
        ExitCode::SUCCESS
    } else {
        tracing::warn!("shut down with requests or hooks cut short");
        ExitCode::FAILURE
    }
}

/// Tells the service manager `READY=1` once start-up adoption is done (the
/// socket was listening before the switch task started).
async fn notify_ready(shared: std::sync::Arc<state::Shared>, notifier: std::sync::Arc<systemd::Notifier>) {
    shared.started.wait().await;
    if !shared.shutdown.is_started() {
        notifier.notify("READY=1");
        tracing::info!("start-up done: told the service manager READY=1");
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The signal streams llmux listens to, installed together.
struct Signals {
    hup: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup()).ok();
        if hup.is_none() {
            tracing::warn!("cannot install the SIGHUP handler; reload with POST /llmux/reload");
        }
        Signals { hup, term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
    }
}

/// Rereads the config at each SIGHUP (errors are logged by the reload).
async fn reload_on_sighup(shared: std::sync::Arc<state::Shared>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the config");
        let _ = control::reload(&shared).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal(term: Option<tokio::signal::unix::Signal>, int: Option<tokio::signal::unix::Signal>) {
    let (Some(mut term), Some(mut int)) = (term, int) else {
        tracing::warn!("cannot install signal handlers; stop llmux with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
