//! `llmux-standin`: a stand-in OpenAI-compatible backend for llmux's tests,
//! benches and the example config.
//!
//! It is a deliberately minimal HTTP/1.1 server over tokio's `TcpStream`
//! rather than hyper: tests need raw control of the wire to inject faults
//! (hangs, resets, malformed responses, mid-stream failures). It is also
//! the "instant" backend of the benchmarks, so the hot path does little
//! work: buffered reads, one write per response, keep-alive.
//!
//! The modules, in the order a request meets them: [`cli`] (options and
//! the `--help` text), this file (listen, accept, signals), [`conn`] (one
//! connection: reading requests, keep-alive, closing), [`http`] (request
//! heads parsed with `httparse`, body framing), [`routes`] (bookkeeping,
//! fault headers applied, dispatch), [`faults`] (the `x-standin-*`
//! headers), [`responses`] (the JSON bodies), [`reply`] (writing a
//! response), [`sse`] (streamed completions) and [`state`] (the model,
//! counters and recent requests behind `/standin/*`).
//!
//! This package must not depend on the `llmux` library: it only uses
//! external crates. It is its own package in the workspace so that
//! `cargo install --path .` installs llmux alone.

#![forbid(unsafe_code)]

mod cli;
mod conn;
mod faults;
mod form;
mod http;
mod reply;
mod responses;
mod routes;
mod sse;
mod state;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::state::State;

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

fn main() -> ExitCode {
    let cfg = match cli::parse_args() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(cli::USAGE.as_bytes()).and_then(|()| out.flush());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llmux-standin: error: {e}\nRun `llmux-standin --help` for usage.");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llmux-standin: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(cfg));
    // Hung connections are simply dropped.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn run(cfg: cli::Config) -> ExitCode {
    let (listener, signals) = match listen(&cfg).await {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("llmux-standin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = Arc::new(State::new(&cfg));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    accept_until_signal(&state, listener, signals, &shutdown_rx).await;
    let _ = shutdown_tx.send(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

/// Installs the signal handlers, binds, and prints `listening on ADDR`.
async fn listen(cfg: &cli::Config) -> Result<(TcpListener, Signals), String> {
    // Install the handlers before announcing the port, so a test that signals
    // us right after reading the first line still gets a clean exit.
    let signals = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => Signals { term, int },
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot install signal handlers: {e}")),
    };
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
    Ok((listener, signals))
}

/// Serves each accepted connection on its own task until a signal arrives;
/// the listener is closed on return.
async fn accept_until_signal(
    state: &Arc<State>,
    listener: TcpListener,
    mut signals: Signals,
    shutdown: &watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(conn::serve(Arc::clone(state), stream, shutdown.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    eprintln!("llmux-standin: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}
