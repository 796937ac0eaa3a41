//! The listener: accepting connections (HTTP/1.1 and h2c on one port),
//! the switch task's lifetime, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{Config, Limits};
use crate::metrics::Limit;
use crate::policy::Fifo;
use crate::service::{self, Peer};
use crate::state::{ConfigFile, Shared};
use crate::switcher;

/// A bound, not yet serving, llmux.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// How a server's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Every in-flight request finished and no hook was cut short.
    pub clean: bool,
}

/// Aborts the switch task if the server future is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    /// Binds the configured address (port 0 picks a free port).
    pub async fn bind(config: Config) -> io::Result<Server> {
        Server::bind_from(config, None).await
    }

    /// Binds like [`Server::bind`]; `file` is where `config` came from,
    /// reread by a reload (`SIGHUP`, `POST /llmux/reload`).
    pub async fn bind_from(config: Config, file: Option<ConfigFile>) -> io::Result<Server> {
        let listener = TcpListener::bind(SocketAddr::new(config.host, config.port)).await?;
        Ok(Server { listener, shared: Arc::new(Shared::new(config, file)) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state, for tests and embedding.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully:
    /// stop accepting, answer queued requests with 503, give in-flight
    /// requests and a running hook `shutdown_grace_secs`.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Exit {
        let Server { listener, shared } = self;
        let switch_task = AbortOnDrop(tokio::spawn(switcher::run(Arc::clone(&shared), Box::new(Fifo))));
        let graceful = GracefulShutdown::new();
        accept_until(&listener, &shared, &graceful, shutdown).await;
        drop(listener);
        shared.shutdown.trigger();
        let grace = shared.catalog().config.shutdown_grace;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: waiting for in-flight requests");
        let drained = tokio::time::timeout(grace, graceful.shutdown()).await.is_ok();
        if !drained {
            tracing::warn!("shutdown grace ran out: in-flight requests were cut");
        }
        // The hook runner stops a running hook at the end of the grace
        // (SIGTERM, then SIGKILL after the kill grace).
        let stop = crate::hooks::stop_bound(shared.catalog().config.policy.hook_kill_grace);
        let switch_done =
            tokio::time::timeout(grace + stop + Duration::from_secs(5), switch_task_join(switch_task)).await.is_ok();
        // Close llmux's own backend connections (the model itself stays up
        // for the next start to adopt).
        shared.routing.store(Arc::new(crate::routing::Routing::empty()));
        let hooks_cut = shared.shutdown.cut_count();
        Exit { clean: drained && switch_done && hooks_cut == 0 }
    }
}

async fn switch_task_join(mut task: AbortOnDrop) {
    let _ = (&mut task.0).await;
}

async fn accept_until(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    // Connection-level settings are read once: a reload lists them as
    // needing a restart.
    let (builders, max_connections, header_timeout) = {
        let config = &shared.catalog().config;
        (Arc::new(Builders::new(&config.limits)), config.limits.max_connections, config.limits.header_read_timeout)
    };
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        // Past max_connections, new connections wait in the kernel's
        // backlog until one closes.
        if slots.available_permits() == 0 {
            shared.metrics.reject(Limit::MaxConnections);
        }
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = &mut shutdown => return,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let (shared, builders, watcher) = (Arc::clone(shared), Arc::clone(&builders), graceful.watcher());
                    tokio::spawn(async move {
                        let _open = OpenConnection::count(&shared);
                        let protocol = match detect_protocol(&stream, header_timeout).await {
                            Ok(Some(protocol)) => protocol,
                            Ok(None) => return,
                            Err(_) => return shared.metrics.reject(Limit::HeaderReadTimeout),
                        };
                        let service = service_for(Arc::clone(&shared), addr);
                        let io = TokioIo::new(stream);
                        let result = match protocol {
                            Protocol::Http1 => watcher.watch(builders.http1.serve_connection(io, service)).await,
                            Protocol::Http2 => watcher.watch(builders.http2.serve_connection(io, service)).await,
                        };
                        if let Err(e) = result {
                            tracing::debug!("connection ended with an error: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off briefly
                    // instead of spinning; the listener stays up.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => return,
        }
    }
}

/// Counts an open client connection for as long as it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn count(shared: &Arc<Shared>) -> OpenConnection {
        shared.metrics.open_connections.fetch_add(1, Relaxed);
        OpenConnection(Arc::clone(shared))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.open_connections.fetch_sub(1, Relaxed);
    }
}

/// The two protocols served on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// h2c with prior knowledge.
    Http2,
}

/// One builder per protocol: llmux detects the protocol itself (hyper-util's
/// detection has no timeout: a silent client would hold a slot forever).
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// hyper's read buffer per connection: large enough for the biggest head
/// allowed, and no larger than 64 KiB otherwise. hyper's default (about
/// 400 KiB) is kept for as long as a connection lives, and a request body
/// waiting in a queue holds the buffers it was read into.
fn read_buffer_bytes(limits: &Limits) -> usize {
    (limits.max_header_bytes + 8 * 1024).max(64 * 1024)
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(read_buffer_bytes(limits));
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.h2_max_header_list_bytes)
            .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Builders { http1, http2 }
    }
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks at the first bytes, within `timeout`: the HTTP/2 preface means
/// h2c, anything else HTTP/1.1. `Ok(None)` if the client closes, `Err` if
/// it stays silent (the connection is then dropped).
async fn detect_protocol(
    stream: &tokio::net::TcpStream,
    timeout: Duration,
) -> Result<Option<Protocol>, tokio::time::error::Elapsed> {
    let detect = async {
        let mut buf = [0u8; 24];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if !H2_PREFACE.starts_with(&buf[..n]) {
                return Some(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // A partial preface: the rest is on its way. peek would return
            // at once with the same bytes, so wait a moment (rare path).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(timeout, detect).await
}

/// llmux's service for one connection from `addr`.
fn service_for(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::body::ResponseBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<crate::body::ResponseBody>, std::convert::Infallible>> + Send,
> + Clone {
    let peer = Peer { ip: ip_header(addr), loopback: addr.ip().is_loopback() };
    service_fn(move |req| service::handle(Arc::clone(&shared), peer.clone(), req))
}

/// Serves one HTTP/1.1 connection over any byte stream (a socket, or an
/// in-memory pipe in tests and fuzzing) until it closes; `addr` is the
/// client's.
pub async fn serve_io<I>(shared: Arc<Shared>, io: I, addr: SocketAddr) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builders = Builders::new(&shared.catalog().config.limits);
    builders.http1.serve_connection(TokioIo::new(io), service_for(shared, addr)).await
}

fn ip_header(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}
