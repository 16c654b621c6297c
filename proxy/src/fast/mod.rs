//! The HTTP/1.1 fast path: plain requests forwarded byte for byte, without building `http`
//! types, in the connection's own task.
//!
//! Why: on one core, hyper's server and the `HeaderMap`s on both sides cost about twice what
//! nginx spends per request in user space (docs/benchmarks.md). Most API traffic is the
//! simple case — an HTTP/1.1 request with no body or a `Content-Length` body, to an HTTP/1.1
//! upstream — and that case is handled here: parse with httparse, route on the raw fields,
//! write the upstream head straight from the client's bytes (minus hop-by-hop fields, plus
//! forwarding headers, request id and trace context, exactly as [`crate::service`] does),
//! then copy the response back the same way.
//!
//! Anything else — HTTP/2 preface, HTTP/1.0, chunked or `Expect` uploads, upgrades, CONNECT,
//! fields named by `Connection`, oversized or malformed heads, routes to HTTP/2 upstreams,
//! and requests no route takes — hands the whole connection, with the bytes already read, to
//! the hyper pipeline, which owns every error answer for those. A connection never goes back
//! from hyper to the fast path. Both paths record the same telemetry through [`Record`].
//!
//! Layout: [`plan`] parses a head and decides (route, flow, upstream head); [`forward`]
//! carries out the tries and answers; [`fields`] holds the header field rules.

mod fields;
mod forward;
mod plan;

use crate::body::{Record, ScopeRef};
use crate::error::ProxyError;
use crate::h1::{self};
use crate::headers;
use crate::service::{ConnInfo, Worker};
use crate::telemetry::Outcome;
use crate::timer::LazyTimer;
use bytes::{Buf, Bytes, BytesMut};
use forward::*;
use plan::*;
use rand::Rng;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Most request fields the fast path takes; more go to hyper (which allows 100).
pub(super) const MAX_FIELDS: usize = 64;

pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection left the fast path.
pub enum Served<IO> {
    /// Closed (client gone, error, shutdown, or `Connection: close`).
    Done,
    /// Serve the rest with hyper; the bytes read so far come first.
    Fallback(Prefixed<IO>),
}

/// An IO that replays bytes already read before reading more.
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Serve an HTTP/1 connection. `sniff_h2`: the listener also speaks cleartext HTTP/2, so a
/// connection that opens with the h2 preface goes to hyper.
pub async fn serve<IO>(w: Arc<Worker>, conn: ConnInfo, mut io: IO, sniff_h2: bool) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut first = true;
    // The client's address as forwarding headers spell it, formatted once per connection.
    let peer = Peer::new(conn);
    let shutdown = w.drain.register().await;
    let mut timers = Timers::default();
    let (mut max_head, mut head_timeout, mut limits_of) = (0, std::time::Duration::ZERO, 0);
    loop {
        // Limits for reading this head; the request itself runs on the snapshot current when
        // its head is complete (`plan`).
        // The head limits of the snapshot in force, read again only when a new one was
        // published (the request itself loads the snapshot once, in `plan`).
        let generation = w.shared.generation();
        if generation != limits_of {
            let snap = w.shared.snapshot.load();
            let p = &snap.config.proxy;
            (max_head, head_timeout) = (p.max_header_bytes, p.header_read_timeout);
            limits_of = snap.generation;
        }
        // Idle keep-alive time counts against the head deadline, as it always has.
        let now = w.shared.clock.now();
        timers.head.set(now.saturating_add(head_timeout), now);
        let (head_len, next) = 'head: loop {
            if rbuf.is_empty() && shutdown.is_draining() {
                return Served::Done;
            }
            if !rbuf.is_empty() {
                if first {
                    let n = rbuf.len().min(H2_PREFACE.len());
                    if rbuf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            // HTTP/2 with prior knowledge; refused where the listener (or
                            // ALPN) said HTTP/1.1 only.
                            return match sniff_h2 {
                                true => fallback(rbuf, io),
                                false => Served::Done,
                            };
                        }
                        // Could still be the preface: wait for more.
                    } else {
                        first = false;
                    }
                }
                if !first {
                    match plan(&w, &peer, &rbuf, max_head) {
                        Parsed::Go(n, p) => break 'head (n, Ok(p)),
                        Parsed::Refuse(n, r) => break 'head (n, Err(r)),
                        Parsed::More => {}
                        Parsed::Fallback => return fallback(rbuf, io),
                    }
                }
            }
            rbuf.reserve(4096);
            let idle = rbuf.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.draining(), if idle => return Served::Done,
                r = h1::read_into(&mut io, &mut rbuf) => match r {
                    Ok(0) | Err(_) => return Served::Done,
                    Ok(_) => {}
                },
                _ = timers.head.expired() => {
                    // Part of a head came and the rest did not: say so before closing
                    // (RFC 9110 408). An idle keep-alive connection just closes.
                    if !rbuf.is_empty() {
                        let _ = head_timeout_answer(&w, &mut io, &mut wbuf, head_timeout).await;
                    }
                    return Served::Done;
                }
            }
        };
        first = false;
        rbuf.advance(head_len);
        // An IO error on either side ends the connection.
        let keep: bool = match next {
            Ok(plan) => forward(
                &w,
                plan,
                &mut io,
                &mut rbuf,
                &mut wbuf,
                &shutdown,
                &mut timers.try_,
            )
            .await
            .unwrap_or_default(),
            Err(r) => refuse(&w, *r, &mut io, &mut rbuf, &mut wbuf, &shutdown)
                .await
                .unwrap_or_default(),
        };
        if !keep {
            let _ = io.shutdown().await;
            return Served::Done;
        }
    }
}

/// A connection's two deadlines, each armed once and moved lazily (see [`crate::timer`]).
#[derive(Default)]
struct Timers {
    head: LazyTimer,
    try_: LazyTimer,
}

/// The 408 for a head that did not arrive in time, counted as an unmatched request.
async fn head_timeout_answer<IO>(
    w: &Worker,
    io: &mut IO,
    wbuf: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let snap = w.shared.snapshot.load_full();
    let rid = headers::new_request_id(w.rng().random());
    let rec = Record::local(snap, ScopeRef::Unmatched, w.id, Outcome::new(0, 0.0));
    let err = ProxyError::RequestTimeout { timeout };
    let latency_us = timeout.as_secs_f64() * 1e6;
    write_error(io, wbuf, &err, &rid, rec, latency_us, false, false).await?;
    io.shutdown().await
}

fn fallback<IO>(rbuf: BytesMut, io: IO) -> Served<IO> {
    Served::Fallback(Prefixed {
        prefix: rbuf.freeze(),
        io,
    })
}
