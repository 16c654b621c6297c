//! Connections to upstreams: a pool per cluster, per worker, per endpoint. HTTP/1.1 goes
//! through our own codec ([`crate::h1`]), driven in the request's task; HTTP/2 through hyper's
//! low-level `client::conn` API.
//!
//! Why not `hyper_util`'s pooled client: it checks connections out through a shared map keyed
//! by URI, and spawns a task per request just to put the connection back when the response is
//! done. Here a worker's pool is touched only by that worker (its mutex is never contended), an
//! HTTP/1 connection goes back from the response body's end (see `body::Record`), and an
//! HTTP/2 connection is shared by every request of the worker to that endpoint.
//!
//! A pooled HTTP/1 connection may have been closed by the upstream while idle; when the codec
//! hands the request back as safe to resend, it is retried once on a fresh connection.
//! Anything else is the caller's error to report.

use crate::body::{BoxError, RequestBody};
use crate::config::{TransportConfig, UpstreamProtocol};
use crate::h1;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::TlsConnector;
use vivremotion_protocol::Nanos;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("no usable root certificates: {0}")]
    Roots(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a request did not get a response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, timeout, TLS or h2 handshake).
    Connect(String),
    /// The connection failed after the request was (at least partly) sent.
    Request(BoxError),
}

/// An HTTP/1 connection lent to one request; returned with [`ClusterClients::put_back`].
pub type Http1Conn = h1::Conn;

/// A response body from either kind of upstream connection.
pub enum UpstreamBody {
    H1(h1::Body),
    H2(Incoming),
}

#[derive(Default)]
struct WorkerPool {
    h1: HashMap<u64, Vec<(Http1Conn, Nanos)>>,
    h2: HashMap<u64, http2::SendRequest<RequestBody>>,
}

/// A cluster's connections, and what built them (to reuse across reloads).
pub struct ClusterClients {
    pub transport: TransportConfig,
    pub scheme: Scheme,
    tls: Option<TlsConnector>,
    pools: Box<[Mutex<WorkerPool>]>,
}

impl std::fmt::Debug for ClusterClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClients")
            .field("transport", &self.transport)
            .field("workers", &self.pools.len())
            .finish()
    }
}

enum Conn {
    H1(Http1Conn),
    H2(http2::SendRequest<RequestBody>),
}

impl ClusterClients {
    pub fn build(
        transport: &TransportConfig,
        workers: usize,
    ) -> Result<ClusterClients, ClientError> {
        let tls = match &transport.tls {
            Some(t) => {
                let mut cfg = client_tls_config(t.ca_file.as_deref())?;
                cfg.alpn_protocols = match transport.protocol {
                    UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
                    UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
                    UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                };
                Some(TlsConnector::from(Arc::new(cfg)))
            }
            None => None,
        };
        Ok(ClusterClients {
            transport: transport.clone(),
            scheme: if transport.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            tls,
            // One pool per worker plus one for any other thread.
            pools: (0..workers.max(1) + 1).map(|_| Mutex::default()).collect(),
        })
    }

    fn pool(&self, worker: usize) -> std::sync::MutexGuard<'_, WorkerPool> {
        self.pools[worker.min(self.pools.len() - 1)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A usable pooled connection, dropping closed and expired ones on the way.
    fn take_idle(&self, worker: usize, endpoint: u64, now: Nanos) -> Option<Conn> {
        let mut pool = self.pool(worker);
        if let Some(h2) = pool.h2.get(&endpoint) {
            if !h2.is_closed() {
                return Some(Conn::H2(h2.clone()));
            }
            pool.h2.remove(&endpoint);
        }
        let idle = pool.h1.get_mut(&endpoint)?;
        let max_idle = self.transport.pool_idle_timeout;
        while let Some((mut c, since)) = idle.pop() {
            if now.saturating_since(since) <= max_idle && c.is_idle_alive() {
                return Some(Conn::H1(c));
            }
        }
        None
    }

    /// Whether every connection to this cluster speaks HTTP/1.1 (ALPN cannot pick h2).
    pub fn speaks_h1_only(&self) -> bool {
        match self.transport.protocol {
            UpstreamProtocol::Http1 => true,
            UpstreamProtocol::Auto => self.tls.is_none(),
            UpstreamProtocol::Http2 => false,
        }
    }

    /// An idle HTTP/1.1 connection to the endpoint, or a new one; `true` if it was pooled.
    pub async fn checkout_h1(
        &self,
        worker: usize,
        endpoint: u64,
        authority: &Authority,
        now: Nanos,
        fresh: bool,
    ) -> Result<(h1::Conn, bool), SendError> {
        if !fresh {
            if let Some(Conn::H1(c)) = self.take_idle(worker, endpoint, now) {
                return Ok((c, true));
            }
        }
        match Box::pin(self.connect(authority)).await? {
            Conn::H1(c) => Ok((c, false)),
            Conn::H2(_) => Err(SendError::Connect(
                "the upstream negotiated HTTP/2 on a cluster set to HTTP/1.1".into(),
            )),
        }
    }

    /// Return an HTTP/1 connection whose response has been read completely.
    pub fn put_back(&self, worker: usize, endpoint: u64, conn: Http1Conn, now: Nanos) {
        let mut pool = self.pool(worker);
        let idle = pool.h1.entry(endpoint).or_default();
        if idle.len() < self.transport.pool_max_idle_per_endpoint {
            idle.push((conn, now));
        }
    }

    /// Close idle connections that outlived `pool_idle_timeout` (upstreams close them anyway).
    pub fn sweep(&self, now: Nanos) {
        let max_idle = self.transport.pool_idle_timeout;
        for p in self.pools.iter() {
            let mut pool = p.lock().unwrap_or_else(|p| p.into_inner());
            for idle in pool.h1.values_mut() {
                idle.retain_mut(|(c, since)| {
                    now.saturating_since(*since) <= max_idle && c.is_idle_alive()
                });
            }
            pool.h1.retain(|_, v| !v.is_empty());
            pool.h2.retain(|_, c| !c.is_closed());
        }
    }

    /// Send `req` to the endpoint, on a pooled connection if one is idle. An HTTP/1 response
    /// body carries its connection; take it back with [`h1::Body::take_reusable`].
    pub async fn send(
        &self,
        worker: usize,
        endpoint: u64,
        authority: &Authority,
        mut req: Request<RequestBody>,
        now: Nanos,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut retried = false;
        loop {
            let (conn, fresh) = match self.take_idle(worker, endpoint, now) {
                Some(c) => (c, false),
                // Boxed: the connect future (TCP, TLS, h2 handshakes) is kilobytes large, and
                // inline it would be copied with every request's future, pooled or not.
                None => (Box::pin(self.connect(authority)).await?, true),
            };
            match conn {
                Conn::H2(mut h2) => {
                    if fresh {
                        self.pool(worker).h2.insert(endpoint, h2.clone());
                    }
                    return h2
                        .send_request(req)
                        .await
                        .map(|r| r.map(UpstreamBody::H2))
                        .map_err(|e| SendError::Request(Box::new(e)));
                }
                Conn::H1(c) => match c.send(req, !fresh).await {
                    Ok(resp) => return Ok(resp.map(UpstreamBody::H1)),
                    Err(f) => match f.unsent {
                        Some(unsent) if !retried => {
                            req = unsent;
                            retried = true;
                        }
                        _ => return Err(SendError::Request(Box::new(f.error))),
                    },
                },
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, SendError> {
        let t = &self.transport;
        let timeout = t.connect_timeout;
        let within = |what: &str| {
            format!(
                "{what} took longer than {}",
                humantime::format_duration(timeout)
            )
        };
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority.as_str()))
            .await
            .map_err(|_| SendError::Connect(within("connecting")))?
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None if t.protocol == UpstreamProtocol::Http2 => {
                h2_handshake(TokioIo::new(tcp), timeout).await
            }
            None => Ok(Conn::H1(h1::Conn::new(h1::Stream::Tcp(tcp)))),
            Some(connector) => {
                let name = match t.tls.as_ref().and_then(|c| c.server_name.clone()) {
                    Some(n) => n,
                    None => authority
                        .host()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                };
                let name = ServerName::try_from(name)
                    .map_err(|e| SendError::Connect(format!("TLS server name: {e}")))?;
                let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| SendError::Connect(within("the TLS handshake")))?
                    .map_err(|e| SendError::Connect(format!("TLS handshake: {e}")))?;
                let h2 = match tls.get_ref().1.alpn_protocol() {
                    Some(p) => p == b"h2",
                    None => t.protocol == UpstreamProtocol::Http2,
                };
                if h2 {
                    h2_handshake(TokioIo::new(tls), timeout).await
                } else {
                    Ok(Conn::H1(h1::Conn::new(h1::Stream::Tls(Box::new(tls)))))
                }
            }
        }
    }
}

async fn h2_handshake<T>(io: TokioIo<T>, timeout: Duration) -> Result<Conn, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .adaptive_window(true);
    let (send, conn) = tokio::time::timeout(timeout, b.handshake(io))
        .await
        .map_err(|_| SendError::Connect("HTTP/2 handshake timed out".into()))?
        .map_err(|e| SendError::Connect(format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(Conn::H2(send))
}

fn client_tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ClientError::CaFile {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::CaFile {
                    path: path.display().to_string(),
                    detail: "no PEM certificates in it".into(),
                });
            }
            for c in certs {
                roots.add(c)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                // Skip the odd unparsable system certificate rather than failing every cluster.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(ClientError::Roots(format!(
                    "the system has none ({} errors); set tls.ca_file",
                    native.errors.len()
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
