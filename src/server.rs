//! The listener: accepting connections (HTTP/1.1 and h2c on one port,
//! told apart by [`crate::detect`]), the switch task's lifetime, and
//! graceful shutdown.

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
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{Config, Limits};
use crate::detect::{self, Detected, Protocol};
use crate::machine::SwitchPolicy;
use crate::metrics::Limit;
use crate::service::{self, Peer};
use crate::shutdown::Shutdown;
use crate::state::{ConfigFile, Shared};
use crate::switcher;

/// A bound, not yet serving, llmux.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    policy: Option<Box<dyn SwitchPolicy>>,
}

/// How a server's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Every in-flight request finished and no hook was cut short.
    pub clean: bool,
}

/// Aborts a task when dropped (the switch task, if the server future is).
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
        let listener = listen(&config.host, config.port).await?;
        Ok(Server { listener, shared: Arc::new(Shared::new(config, file)), policy: None })
    }

    /// Serves `listener` (a socket passed by the service manager, see
    /// [`crate::systemd`]) instead of binding the configured address. It
    /// must be non-blocking; call inside the runtime.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        file: Option<ConfigFile>,
    ) -> io::Result<Server> {
        let listener = TcpListener::from_std(listener)?;
        Ok(Server { listener, shared: Arc::new(Shared::new(config, file)), policy: None })
    }

    /// Chooses switch targets with `policy` instead of the configured one
    /// (embedding, tests, the simulator).
    pub fn with_policy(mut self, policy: Box<dyn SwitchPolicy>) -> Server {
        self.policy = Some(policy);
        self
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
        let Server { listener, shared, policy } = self;
        let scheduler = shared.catalog().config.policy.scheduler;
        let policy = policy.unwrap_or_else(|| crate::machine::policy::for_scheduler(scheduler));
        let switch_task = AbortOnDrop(tokio::spawn(supervise(Arc::clone(&shared), policy)));
        let graceful = GracefulShutdown::new();
        accept_until(&listener, &shared, &graceful, shutdown).await;
        drop(listener);
        shared.shutdown.trigger();
        let grace = shared.catalog().config.shutdown_grace;
        tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down: waiting for in-flight requests");
        let drained = tokio::time::timeout(grace, graceful.shutdown()).await.is_ok();
        if !drained {
            tracing::warn!("shutdown grace ran out: in-flight requests were cut");
        }
        // The hook runner stops a running hook at the end of the grace
        // (SIGTERM, then SIGKILL after the kill grace).
        let stop = crate::hooks::stop_bound(shared.catalog().config.policy.hook_kill_grace);
        let switch_done =
            tokio::time::timeout(grace + stop + Duration::from_secs(5), switch_task_join(switch_task)).await.is_ok();
        // The models stay up for the next start to adopt, unless the
        // policy says to put them to sleep.
        let slept = !shared.catalog().config.policy.sleep_on_shutdown || switcher::sleep_all_at_exit(&shared).await;
        // Close llmux's own backend connections.
        shared.routing.store(Arc::new(crate::routing::Routing::empty()));
        let hooks_cut = shared.shutdown.cut_count();
        let alive = !shared.is_switch_task_dead();
        Exit { clean: drained && switch_done && hooks_cut == 0 && alive && slept }
    }
}

/// Binds `host:port`: a name is resolved, and the first of its addresses
/// that can be bound is. The error names the address:
/// `cannot listen on 0.0.0.0:3000: address already in use`.
async fn listen(host: &str, port: u16) -> io::Result<TcpListener> {
    let named = || if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: cannot resolve `{host}`: {e}", named())))?
        .collect();
    let mut failed = None;
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => failed = Some(io::Error::new(e.kind(), format!("cannot listen on {addr}: {}", why(&e)))),
        }
    }
    Err(failed.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("cannot listen on {}: `{host}` has no address", named()))
    }))
}

/// Why a bind failed, in words.
fn why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "no such address on this machine".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_owned(),
        _ => e.to_string(),
    }
}

/// Runs the switch task and watches it. If it ends before shutdown (a
/// panic, a bug), every miss would wait forever: it is logged, marked dead
/// (misses get 503, `/health` says so) and the exit code will say so.
async fn supervise(shared: Arc<Shared>, policy: Box<dyn SwitchPolicy>) {
    let mut task = AbortOnDrop(tokio::spawn(switcher::run(Arc::clone(&shared), policy)));
    let ended = (&mut task.0).await;
    let why = match ended {
        Ok(()) if shared.shutdown.is_started() => return,
        Ok(()) => "it returned before shutdown".to_owned(),
        Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(e.into_panic())),
        Err(e) => format!("it was cancelled: {e}"),
    };
    tracing::error!("the switch task stopped ({why}): misses get 503 until llmux is restarted");
    shared.switch_task_died();
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
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
                    let conn = Conn { shared: Arc::clone(shared), builders: Arc::clone(&builders), header_timeout };
                    tokio::spawn(conn.serve(stream, addr, graceful.watcher(), permit));
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

/// What a connection's task needs besides its socket.
struct Conn {
    shared: Arc<Shared>,
    builders: Arc<Builders>,
    header_timeout: Duration,
}

impl Conn {
    /// Detects the protocol (see [`detect`]) and serves the connection;
    /// it joins the graceful shutdown (`watcher`) once detected.
    async fn serve(self, stream: TcpStream, addr: SocketAddr, watcher: Watcher, permit: OwnedSemaphorePermit) {
        let Conn { shared, builders, header_timeout } = self;
        let _open = OpenConnection::count(&shared);
        let (protocol, io) = match detect::detect(stream, header_timeout, shared.shutdown.started()).await {
            Detected::Ready(protocol, io) => (protocol, TokioIo::new(io)),
            Detected::TimedOut => return shared.metrics.reject(Limit::HeaderReadTimeout),
            Detected::Closed | Detected::Shutdown => return,
        };
        let service = service_for(Arc::clone(&shared), addr);
        // Held until the connection ends: the graceful shutdown waits for it.
        let _watching = watcher;
        let shutdown = &shared.shutdown;
        let result = match protocol {
            Protocol::Http1 => until_shutdown(builders.http1.serve_connection(io, service), shutdown).await,
            Protocol::Http2 => until_shutdown(builders.http2.serve_connection(io, service), shutdown).await,
        };
        if let Err(e) = result {
            tracing::debug!("connection ended with an error: {e}");
        }
        drop(permit);
    }
}

/// Serves `conn`; once `shutdown` has started, tells it to finish
/// gracefully (the request in progress is answered, then the connection
/// closes), but only after it has been polled once. hyper closes a
/// connection told to shut down before it read a byte, and the bytes
/// detection already read reach it on its first poll: a request accepted
/// just before a shutdown is answered, not dropped.
///
/// The shutdown's notification is polled once, to register this task's
/// waker, and again only when the flag says it fired: polling a pending
/// `Notified` takes the `Notify`'s lock, and the connection is polled for
/// every request.
async fn until_shutdown<C: GracefulConnection>(conn: C, shutdown: &Shutdown) -> C::Output {
    tokio::pin!(conn);
    let started = shutdown.started();
    tokio::pin!(started);
    let (mut registered, mut told) = (false, false);
    std::future::poll_fn(|cx| loop {
        let out = conn.as_mut().poll(cx);
        if out.is_ready() || told || (registered && !shutdown.is_started()) {
            return out;
        }
        registered = true;
        if started.as_mut().poll(cx).is_pending() {
            return out;
        }
        told = true;
        conn.as_mut().graceful_shutdown();
    })
    .await
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

/// llmux's service for one connection from `addr`.
fn service_for(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::response::ResponseBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<crate::response::ResponseBody>, std::convert::Infallible>> + Send,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Rewind;
    use bytes::Bytes;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    /// A request whose first bytes detection read (they sit in the
    /// `Rewind`), on a connection the shutdown reaches before hyper polled
    /// it: answered, then closed (hyper alone would close it unread).
    #[tokio::test]
    async fn a_request_read_by_detection_is_answered_after_the_shutdown_started() {
        let (mut client, server) = duplex(4096);
        let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let io = TokioIo::new(Rewind::new(server, Bytes::from_static(&request[..10])));
        client.write_all(&request[10..]).await.expect("write");
        let service = service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(Bytes::from("hi"))))
        });
        let conn = http1::Builder::new().serve_connection(io, service);
        let shutdown = Shutdown::default();
        shutdown.trigger();
        let served = until_shutdown(conn, &shutdown);
        let ((), result) = tokio::join!(
            async {
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.expect("read");
                let answer = String::from_utf8_lossy(&answer);
                assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("hi"), "{answer:?}");
            },
            served
        );
        result.expect("served");
    }

    /// An idle keep-alive connection whose task is asleep is woken by the
    /// shutdown and closed: the notification keeps the waker it was first
    /// polled with, though it is not polled again until the flag is set.
    #[tokio::test]
    async fn an_idle_connection_ends_when_the_shutdown_starts() {
        let (mut client, server) = duplex(4096);
        let service = service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(Bytes::from("hi"))))
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(server), service);
        let shutdown = Arc::new(Shutdown::default());
        let serving = tokio::spawn({
            let shutdown = Arc::clone(&shutdown);
            async move { until_shutdown(conn, &shutdown).await }
        });
        // One request answered: the connection is up, idle, its task parked.
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let mut answer = [0u8; 64];
        let n = client.read(&mut answer).await.expect("read");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
        shutdown.trigger();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), serving).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the idle connection did not end: {ended:?}");
    }
}
