//! Listeners and worker threads.
//!
//! Thread-per-core: each worker runs its own single-threaded tokio runtime with its own
//! listening socket per listener (SO_REUSEPORT, so the kernel spreads connections), its own
//! connection pools and its own telemetry shard. Nothing on the request path is shared between
//! workers but the policy snapshot (read through `ArcSwap`) and per-endpoint atomics.

use crate::config::{Config, ListenerConfig, ListenerProtocol};
use crate::fast::{self, Served};
use crate::service::{handle, ConnInfo, Worker};
use crate::state::Shared;
use crate::tls::{self, TlsError};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name:?}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name:?}: {source}")]
    Tls { name: String, source: TlsError },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// A listener bound once per worker.
pub struct BoundListener {
    pub name: String,
    pub local: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    tls: Option<TlsAcceptor>,
    protocol: ListenerProtocol,
}

fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Bind `l` once per worker. A fixed port is first probed without SO_REUSEPORT, so a port
/// held by another process is an error rather than silently shared.
pub fn bind(l: &ListenerConfig, workers: usize) -> Result<BoundListener, ServerError> {
    let err = |source| ServerError::Bind {
        name: l.name.clone(),
        addr: l.listen,
        source,
    };
    let tls = match &l.tls {
        Some(t) => Some(TlsAcceptor::from(
            tls::server_config(t, l.protocol).map_err(|source| ServerError::Tls {
                name: l.name.clone(),
                source,
            })?,
        )),
        None => None,
    };
    let workers = workers.max(1);
    let mut sockets = Vec::with_capacity(workers);
    if workers == 1 {
        sockets.push(socket(l.listen, false).map_err(err)?);
    } else {
        if l.listen.port() != 0 {
            drop(socket(l.listen, false).map_err(err)?);
        }
        let first = socket(l.listen, true).map_err(err)?;
        let local = first.local_addr().map_err(err)?;
        sockets.push(first);
        for _ in 1..workers {
            sockets.push(socket(local, true).map_err(err)?);
        }
    }
    let local = sockets[0].local_addr().map_err(err)?;
    Ok(BoundListener {
        name: l.name.clone(),
        local,
        sockets,
        tls,
        protocol: l.protocol,
    })
}

/// The HTTP server settings every worker uses.
pub fn http_builder(cfg: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.proxy.header_read_timeout)
        // hyper answers 431 itself above this; our own (JSON) check applies max_header_bytes.
        .max_buf_size((cfg.proxy.max_header_bytes * 2).max(64 * 1024))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size((cfg.proxy.max_header_bytes * 2).max(64 * 1024) as u32)
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Start one worker thread per worker index, each serving every listener.
pub fn spawn_workers(
    shared: &Arc<Shared>,
    listeners: &mut [BoundListener],
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, ServerError> {
    let cfg = shared.config();
    let workers = cfg.proxy.workers.max(1);
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let mine: Vec<(std::net::TcpListener, Option<TlsAcceptor>, ListenerProtocol)> = listeners
            .iter_mut()
            .filter_map(|l| {
                let s = if l.sockets.is_empty() {
                    None
                } else {
                    Some(l.sockets.remove(0))
                };
                s.map(|s| (s, l.tls.clone(), l.protocol))
            })
            .collect();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let builder = http_builder(&cfg);
        let drain = cfg.proxy.drain_timeout;
        let handle = std::thread::Builder::new()
            .name(format!("vm-worker-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "cannot start worker runtime");
                        return;
                    }
                };
                let worker = Arc::new(Worker::new(id, shared));
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (sock, tls, protocol) in mine {
                        match tokio::net::TcpListener::from_std(sock) {
                            Ok(l) => tasks.push(tokio::spawn(accept_loop(
                                l,
                                tls,
                                protocol,
                                worker.clone(),
                                builder.clone(),
                                shutdown.clone(),
                                drain,
                            ))),
                            Err(e) => {
                                tracing::error!(worker = id, error = %e, "cannot register listener")
                            }
                        }
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .map_err(ServerError::Thread)?;
        handles.push(handle);
    }
    Ok(handles)
}

/// The builder restricted to what a connection may speak.
fn for_protocol(
    b: &auto::Builder<TokioExecutor>,
    p: ListenerProtocol,
) -> auto::Builder<TokioExecutor> {
    match p {
        ListenerProtocol::Auto => b.clone(),
        ListenerProtocol::Http1 => b.clone().http1_only(),
        ListenerProtocol::Http2 => b.clone().http2_only(),
    }
}

/// HTTP/1 connections start on the fast path; HTTP/2, and whatever the fast path declines,
/// go to hyper.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<IO, S>(
    stream: IO,
    protocol: ListenerProtocol,
    w: Arc<Worker>,
    conn: ConnInfo,
    builder: auto::Builder<TokioExecutor>,
    svc: S,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::body::ResponseBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let result = match protocol {
        // Not `serve_connection_with_upgrades`: it sniffs the version and ignores the
        // builder's `http2_only`, answering a bad preface as HTTP/1.
        ListenerProtocol::Http2 => {
            let c = builder.serve_connection(TokioIo::new(stream), svc);
            watcher.watch(c.into_owned()).await
        }
        p => match fast::serve(w, conn, stream, p == ListenerProtocol::Auto).await {
            Served::Done => return,
            Served::Fallback(io) => {
                let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                watcher.watch(c.into_owned()).await
            }
        },
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    protocol: ListenerProtocol,
    worker: Arc<Worker>,
    builder: auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let handshake_timeout = worker.shared.config().proxy.header_read_timeout;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        metrics::counter!("vivremotion_proxy_accept_errors_total").increment(1);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = ConnInfo { client: peer, tls: tls.is_some() };
                let w = worker.clone();
                let svc = service_fn(move |req| {
                    let w = w.clone();
                    // Boxed: the request future is ~2.5 KB and hyper moves the future it is given
                    // more than once; moving a pointer instead measured +5 % throughput.
                    let fut = Box::pin(handle(w, conn, req));
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let watcher = graceful.watcher();
                match &tls {
                    None => {
                        let builder = for_protocol(&builder, protocol);
                        let w = worker.clone();
                        tokio::spawn(serve_connection(stream, protocol, w, conn, builder, svc, watcher));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let builder = builder.clone();
                        let w = worker.clone();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            // ALPN has decided; sniffing the first bytes again could only get it wrong.
                            let negotiated = match stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => ListenerProtocol::Http2,
                                Some(b"http/1.1") => ListenerProtocol::Http1,
                                _ => protocol,
                            };
                            let builder = for_protocol(&builder, negotiated);
                            serve_connection(stream, negotiated, w, conn, builder, svc, watcher).await;
                        });
                    }
                }
            }
        }
    }
    drop(listener);
    // Idle fast-path connections close now; busy ones after their response.
    worker.drain.start();
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = worker.id,
            "drain timeout ({}) reached with connections still open; closing them",
            humantime::format_duration(drain)
        );
    }
}
