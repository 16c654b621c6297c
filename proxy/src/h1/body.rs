//! The response body as an `http_body::Body`, read from the connection as the client side
//! polls it; the connection goes back to its pool only when the body ended exactly at its
//! framing.

use super::*;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pub(super) enum State {
    Reading {
        conn: Conn,
        decode: Decode,
        keep_alive: bool,
    },
    Upgraded(Upgraded),
    /// The body ended; the connection, if it can serve another request.
    Done(Option<Conn>),
}

/// A response body read from an upstream HTTP/1.1 connection.
pub struct Body {
    pub(super) state: State,
}

impl Body {
    pub(super) fn new(conn: Conn, decode: Decode, keep_alive: bool) -> Body {
        let state = if decode == Decode::Length(0) {
            State::Done(keep_alive_done(conn, keep_alive))
        } else {
            State::Reading {
                conn,
                decode,
                keep_alive,
            }
        };
        Body { state }
    }

    pub(super) fn upgraded(u: Upgraded) -> Body {
        Body {
            state: State::Upgraded(u),
        }
    }

    /// The connection of a 101 response, for the tunnel.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        match std::mem::replace(&mut self.state, State::Done(None)) {
            State::Upgraded(u) => Some(u),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The connection, once the body was read to its end and the connection may be reused.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        match &mut self.state {
            State::Done(c) => c.take(),
            _ => None,
        }
    }
}

pub(super) fn keep_alive_done(conn: Conn, keep_alive: bool) -> Option<Conn> {
    // Bytes beyond the response mean the upstream does not frame its messages the way we
    // read them: never put such a connection back.
    (keep_alive && conn.buf.is_empty()).then_some(conn)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            let State::Reading { conn, decode, .. } = &mut this.state else {
                return Poll::Ready(None);
            };
            match decode_step(decode, &mut conn.buf) {
                Err(e) => {
                    this.state = State::Done(None);
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Step::Data(d)) => {
                    if *decode == Decode::Length(0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Step::Trailers(t)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {
                    let want = match decode {
                        Decode::Length(n) => (*n as usize).clamp(1, READ_BODY),
                        _ => READ_BODY,
                    };
                    conn.buf.reserve(want);
                    let n = match ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut conn.io),
                        cx,
                        &mut conn.buf
                    )) {
                        Ok(n) => n,
                        Err(e) => {
                            this.state = State::Done(None);
                            return Poll::Ready(Some(Err(H1Error::Read(e))));
                        }
                    };
                    if n == 0 {
                        let eof_ends = *decode == Decode::Eof;
                        this.state = State::Done(None);
                        return Poll::Ready(if eof_ends {
                            None
                        } else {
                            Some(Err(H1Error::ClosedInBody))
                        });
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done(_) | State::Upgraded(_))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Reading {
                decode: Decode::Length(n),
                ..
            } => SizeHint::with_exact(*n),
            State::Reading { .. } => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }
}

impl Body {
    fn finish(&mut self) {
        if let State::Reading {
            conn, keep_alive, ..
        } = std::mem::replace(&mut self.state, State::Done(None))
        {
            self.state = State::Done(keep_alive_done(conn, keep_alive));
        }
    }
}
