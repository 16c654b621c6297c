//! HTTP/1.1 to upstreams, driven inside the request's own task.
//!
//! Why not hyper's `client::conn::http1`: it needs a task per connection to drive it, and every
//! request then crosses a channel to that task and a oneshot back, waking two tasks per request
//! on a core that does nothing else. Here the request future writes the head, streams the body
//! and parses the response head itself; the response body reads from the connection as the
//! listener side polls it. Measured on the proxy benchmark: see docs/benchmarks.md.
//!
//! The framing rules follow RFC 9112 §6: a response to HEAD, a 1xx, 204 or 304 has no body;
//! `Transfer-Encoding` wins over `Content-Length` (which is then dropped, since it lies);
//! conflicting `Content-Length` values are an invalid response; anything else is read to EOF
//! and the connection is not reused.
//!
//! Layout: this module sends requests ([`Conn::send`]) and holds the connection; [`head`]
//! parses response heads, [`framing`] delimits and decodes bodies, [`body`] is the response
//! body the listener side polls.

mod body;
mod framing;
mod head;

use crate::body::{BoxError, RequestBody};
pub use body::Body;
use bytes::{Bytes, BytesMut};
pub(crate) use framing::*;
pub(crate) use head::*;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest response head (status line + headers) accepted from an upstream.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// Most headers in a response head.
pub(super) const MAX_HEADERS: usize = 128;

/// Read size while a body is streamed.
pub(crate) const READ_BODY_CHUNK: usize = READ_BODY;

/// Longest chunk-size line (size, extensions, CRLF).
pub(super) const MAX_CHUNK_LINE: usize = 4096;

/// Writes are gathered up to this size before going to the socket.
pub(super) const WRITE_HIGH_WATER: usize = 64 * 1024;

pub(super) const READ_HEAD: usize = 8 * 1024;

pub(super) const READ_BODY: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("request body")]
    Body(#[source] BoxError),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("the upstream closed the connection in the middle of the response body")]
    ClosedInBody,
    #[error("invalid response from the upstream: {0}")]
    Invalid(&'static str),
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// The upstream socket, plain or TLS.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to an upstream, idle between requests.
pub struct Conn {
    pub(crate) io: Stream,
    /// Bytes read from the upstream and not consumed yet.
    pub(crate) buf: BytesMut,
}

/// A connection that switched protocols (101), with whatever the upstream sent after the head.
pub struct Upgraded {
    pub io: Stream,
    pub read_ahead: Bytes,
}

/// Why [`Conn::send`] failed, and whether the request may be sent again elsewhere.
pub struct SendFailure {
    pub error: H1Error,
    /// The request, given back when retrying it cannot do harm: nothing of it reached the
    /// upstream, or it is idempotent, bodiless, and the pooled connection died before any byte
    /// of a response (the keep-alive race every HTTP/1 client has to handle).
    pub unsent: Option<Request<RequestBody>>,
}

impl Conn {
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: no EOF, error or stray bytes pending.
    /// Costs no syscall unless the socket was reported readable.
    pub fn is_idle_alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match &mut self.io {
            Stream::Tcp(s) => match s.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut b = [0u8; 1];
                    matches!(s.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            // TLS may carry records that are not application data (session tickets): let
            // rustls read them; only application bytes or EOF make the connection unusable.
            Stream::Tls(s) => {
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                matches!(
                    Pin::new(s.as_mut()).poll_read(&mut cx, &mut rb),
                    Poll::Pending
                )
            }
        }
    }

    /// Send `req` and read the response head. `pooled`: the connection served a request before.
    pub async fn send(
        mut self,
        req: Request<RequestBody>,
        pooled: bool,
    ) -> Result<Response<Body>, SendFailure> {
        let (parts, mut body) = req.into_parts();
        let head_req = parts.method == Method::HEAD;
        let mut wbuf = Vec::with_capacity(512);
        let chunked = encode_head(&parts, &body, &mut wbuf);
        let bodiless = body.is_end_stream();

        // The first body frame often is already here: send it with the head in one write.
        let mut body_done = bodiless;
        if !bodiless {
            let now = {
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(&mut body).poll_frame(&mut cx)
            };
            if let Poll::Ready(f) = now {
                match encode_frame(f, chunked, &mut wbuf) {
                    Ok(done) => body_done = done,
                    Err(e) => return Err(fail(H1Error::Body(e), None)),
                }
            }
        }
        if let Err(e) = self.io.write_all(&wbuf).await {
            // Nothing of the request is known to have arrived; a dead pooled connection
            // fails exactly here, so a body that is still whole can be sent again.
            let unsent = (pooled && bodiless).then(|| Request::from_parts(parts, body));
            return Err(fail(H1Error::Write(e), unsent));
        }
        wbuf.clear();
        if !body_done {
            if let Err(e) = self.write_body(&mut body, chunked, &mut wbuf).await {
                return Err(fail(e, None));
            }
        }
        drop(body);

        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let upgrade_req = parts.headers.contains_key(header::UPGRADE);
        loop {
            let head = match self.read_head().await {
                Ok(h) => h,
                Err(H1Error::ClosedBeforeResponse) if pooled && bodiless && idempotent => {
                    let req = Request::from_parts(parts, RequestBody::empty());
                    return Err(fail(H1Error::ClosedBeforeResponse, Some(req)));
                }
                Err(e) => return Err(fail(e, None)),
            };
            let status = head.status;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if !upgrade_req {
                    return Err(fail(
                        H1Error::Invalid("101 without an upgrade request"),
                        None,
                    ));
                }
                let mut resp = Response::new(Body::upgraded(Upgraded {
                    io: self.io,
                    read_ahead: self.buf.freeze(),
                }));
                *resp.status_mut() = status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                return Ok(resp);
            }
            if status.is_informational() {
                // 100 Continue and friends: the listener side already told the client to go
                // on when the body was first read.
                continue;
            }
            let mut headers = head.headers;
            let kind = match framing(head_req, status, &mut headers) {
                Ok(k) => k,
                Err(e) => return Err(fail(e, None)),
            };
            let keep_alive = keep_alive(head.version, &headers) && !matches!(kind, Decode::Eof);
            let mut resp = Response::new(Body::new(self, kind, keep_alive));
            *resp.status_mut() = status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = headers;
            return Ok(resp);
        }
    }

    async fn write_body(
        &mut self,
        body: &mut RequestBody,
        chunked: bool,
        wbuf: &mut Vec<u8>,
    ) -> Result<(), H1Error> {
        loop {
            // Gather what is ready; write when the body has to be waited for, or a lot is due.
            let now = {
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(&mut *body).poll_frame(&mut cx)
            };
            let frame = match now {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    if !wbuf.is_empty() {
                        self.io.write_all(wbuf).await.map_err(H1Error::Write)?;
                        wbuf.clear();
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
            let done = encode_frame(frame, chunked, wbuf).map_err(H1Error::Body)?;
            if done || wbuf.len() >= WRITE_HIGH_WATER {
                self.io.write_all(wbuf).await.map_err(H1Error::Write)?;
                wbuf.clear();
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Read the next final response head as raw bytes, skipping 1xx heads. A 101 is an
    /// error here: the caller did not ask for an upgrade.
    pub(crate) async fn read_raw_head(&mut self) -> Result<RawHead, H1Error> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_raw_head(&mut self.buf)? {
                    match head.status {
                        101 => return Err(H1Error::Invalid("101 without an upgrade request")),
                        100..=199 => continue,
                        _ => return Ok(head),
                    }
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(H1Error::HeadTooLarge);
                }
            }
            self.fill(READ_HEAD).await?;
        }
    }

    /// Read more from the upstream; EOF before a head is [`H1Error::ClosedBeforeResponse`].
    async fn fill(&mut self, want: usize) -> Result<(), H1Error> {
        self.buf.reserve(want);
        let n = read_into(&mut self.io, &mut self.buf)
            .await
            .map_err(H1Error::Read)?;
        if n == 0 {
            return Err(if self.buf.is_empty() {
                H1Error::ClosedBeforeResponse
            } else {
                H1Error::Invalid("the connection closed inside the response head")
            });
        }
        Ok(())
    }

    async fn read_head(&mut self) -> Result<Head, H1Error> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf)? {
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(H1Error::HeadTooLarge);
                }
            }
            self.fill(READ_HEAD).await?;
        }
    }
}

pub(super) fn fail(error: H1Error, unsent: Option<Request<RequestBody>>) -> SendFailure {
    SendFailure { error, unsent }
}

/// Read once into the spare capacity of `buf` (reserve first); 0 means EOF.
pub(crate) async fn read_into<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await
}

/// Write the request line and headers. Returns whether the body goes chunked.
pub(super) fn encode_head(
    parts: &http::request::Parts,
    body: &RequestBody,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.iter() {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !has_length && !body.is_end_stream();
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_length && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// Append one body frame. Returns true when the body has ended.
pub(super) fn encode_frame(
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    chunked: bool,
    out: &mut Vec<u8>,
) -> Result<bool, BoxError> {
    match frame {
        None => {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Ok(true)
        }
        Some(Err(e)) => Err(e),
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return Ok(false);
                }
                if chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(&data);
                }
                Ok(false)
            }
            Err(frame) => {
                // Trailers end the body; without chunked framing there is nowhere to put them.
                if chunked {
                    out.extend_from_slice(b"0\r\n");
                    if let Ok(trailers) = frame.into_trailers() {
                        for (name, value) in trailers.iter() {
                            out.extend_from_slice(name.as_str().as_bytes());
                            out.extend_from_slice(b": ");
                            out.extend_from_slice(value.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                    out.extend_from_slice(b"\r\n");
                    // The body may still yield `None`; it is not polled again.
                    return Ok(true);
                }
                Ok(false)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderMap, HeaderValue};
    use http::Version;
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    fn decode_all(
        mut decode: Decode,
        input: &[u8],
        splits: &[usize],
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), H1Error> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut cuts = splits.iter().copied().chain(std::iter::repeat(7));
        let mut body = Vec::new();
        let mut trailers = None;
        loop {
            match decode_step(&mut decode, &mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Trailers(t) => {
                    trailers = Some(t);
                    return Ok((body, trailers, buf.len() + input.len() - fed));
                }
                Step::End => return Ok((body, trailers, buf.len() + input.len() - fed)),
                Step::NeedMore => {
                    if fed == input.len() {
                        return Err(H1Error::ClosedInBody);
                    }
                    let n = cuts.next().unwrap_or(1).clamp(1, input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"FF;name=value").unwrap(), 255);
        assert_eq!(parse_chunk_size(b"10 ;x").unwrap(), 16);
        for bad in [&b""[..], b";x", b"1g", b"-1", b"12345678901234567", b"1 2"] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert_eq!(
            framing(true, StatusCode::OK, &mut h.clone()).unwrap(),
            Decode::Length(0)
        );
        assert_eq!(
            framing(false, StatusCode::NO_CONTENT, &mut h.clone()).unwrap(),
            Decode::Length(0)
        );
        assert_eq!(
            framing(false, StatusCode::NOT_MODIFIED, &mut h.clone()).unwrap(),
            Decode::Length(0)
        );
        assert_eq!(
            framing(false, StatusCode::OK, &mut h.clone()).unwrap(),
            Decode::Length(10)
        );
        // Transfer-Encoding wins, and the lying length is dropped.
        let mut both = h.clone();
        both.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            framing(false, StatusCode::OK, &mut both).unwrap(),
            Decode::Chunked(Chunk::Size)
        );
        assert!(!both.contains_key(header::CONTENT_LENGTH));
        let mut gz = HeaderMap::new();
        gz.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            framing(false, StatusCode::OK, &mut gz).unwrap(),
            Decode::Eof
        );
        // Repeated equal lengths are one length; different ones are an invalid response.
        let mut same = h.clone();
        same.append(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert_eq!(
            framing(false, StatusCode::OK, &mut same).unwrap(),
            Decode::Length(10)
        );
        let mut diff = h.clone();
        diff.append(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert!(framing(false, StatusCode::OK, &mut diff).is_err());
        let mut junk = HeaderMap::new();
        junk.insert(header::CONTENT_LENGTH, HeaderValue::from_static("+5"));
        assert!(framing(false, StatusCode::OK, &mut junk).is_err());
        assert_eq!(
            framing(false, StatusCode::OK, &mut HeaderMap::new()).unwrap(),
            Decode::Eof
        );
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let mut close = HeaderMap::new();
        close.insert(header::CONNECTION, HeaderValue::from_static("foo, Close"));
        let mut ka = HeaderMap::new();
        ka.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(keep_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!keep_alive(Version::HTTP_11, &close));
        assert!(!keep_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(keep_alive(Version::HTTP_10, &ka));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", b"3\r\nab"] {
            assert!(
                decode_all(Decode::Chunked(Chunk::Size), bad, &[]).is_err(),
                "{bad:?}"
            );
        }
    }

    proptest! {
        /// Any body, chunked any way, with or without extensions and trailers, and delivered
        /// in any pieces, decodes to itself and consumes exactly the message.
        #[test]
        fn chunked_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk in 1usize..300,
            ext in any::<bool>(),
            trailer in any::<bool>(),
            splits in proptest::collection::vec(1usize..64, 0..40),
            extra in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for c in body.chunks(chunk) {
                wire.extend_from_slice(format!("{:X}", c.len()).as_bytes());
                if ext { wire.extend_from_slice(b";a=b"); }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            if trailer { wire.extend_from_slice(b"grpc-status: 0\r\n"); }
            wire.extend_from_slice(b"\r\n");
            let n = wire.len();
            wire.extend_from_slice(&extra);
            let (out, trailers, left) = decode_all(Decode::Chunked(Chunk::Size), &wire, &splits).unwrap();
            prop_assert_eq!(&out, &body);
            prop_assert_eq!(trailers.is_some(), trailer);
            prop_assert_eq!(left, wire.len() - n);
        }

        /// A length-delimited body stops at its length whatever follows.
        #[test]
        fn length_round_trip(
            body in proptest::collection::vec(any::<u8>(), 1..2000),
            splits in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (out, _, left) = decode_all(Decode::Length(body.len() as u64), &wire, &splits).unwrap();
            prop_assert_eq!(out, body);
            prop_assert_eq!(left, 17);
        }

        /// The response-head parser never panics, whatever the upstream sends.
        #[test]
        fn head_parser_total(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_head(&mut buf);
        }
    }

    /// A one-connection upstream on a real socket: reads one request, answers `reply`, closes.
    /// The handle yields what it read.
    async fn upstream(reply: &'static [u8]) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).await.unwrap();
            s.write_all(reply).await.unwrap();
            s.shutdown().await.unwrap();
            got.truncate(n);
            got
        });
        let conn = Conn::new(Stream::Tcp(TcpStream::connect(addr).await.unwrap()));
        (conn, server)
    }

    /// One request over a real socket to a server that answers with `reply`.
    async fn exchange(reply: &'static [u8], method: Method) -> (Response<Body>, Vec<u8>) {
        let (conn, server) = upstream(reply).await;
        let req = Request::builder()
            .method(method)
            .uri("/x?y=1")
            .header("host", "up")
            .body(RequestBody::empty())
            .unwrap();
        let resp = conn.send(req, false).await.map_err(|f| f.error).unwrap();
        (resp, server.await.unwrap())
    }

    #[tokio::test]
    async fn chunked_response_with_trailers_and_informational_heads() {
        let (resp, sent) = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
            Method::GET,
        )
        .await;
        assert_eq!(sent, b"GET /x?y=1 HTTP/1.1\r\nhost: up\r\n\r\n");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "1");
        // Keep-alive by default, read to its end, nothing left over: reusable.
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn eof_delimited_response_is_read_to_the_end_and_not_reused() {
        let (resp, _) = exchange(b"HTTP/1.0 200 OK\r\n\r\nall of it", Method::GET).await;
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(f) = body.frame().await {
            data.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(data, b"all of it");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_and_head_response_has_none() {
        let (resp, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            Method::GET,
        )
        .await;
        let r = resp.into_body().collect().await;
        assert!(matches!(r, Err(H1Error::ClosedInBody)));
        let (resp, sent) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            Method::HEAD,
        )
        .await;
        assert!(sent.starts_with(b"HEAD "));
        assert_eq!(resp.headers()["content-length"], "10");
        let mut body = resp.into_body();
        assert!(body.is_end_stream());
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn garbage_and_silence_are_clear_errors() {
        let (conn, _) = upstream(b"").await;
        let f = conn
            .send(Request::new(RequestBody::empty()), true)
            .await
            .err()
            .unwrap();
        assert!(matches!(f.error, H1Error::ClosedBeforeResponse));
        assert!(
            f.unsent.is_some(),
            "an idempotent bodiless request on a pooled connection may be retried"
        );
        let (conn, _) = upstream(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let err = conn
            .send(Request::new(RequestBody::empty()), false)
            .await
            .err()
            .unwrap()
            .error;
        assert!(matches!(err, H1Error::Invalid(_)), "{err}");
    }
}
