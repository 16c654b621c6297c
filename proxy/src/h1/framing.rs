//! How a response body is delimited (RFC 9112 §6) and decoding it step by step: length,
//! chunked (with trailers), or until the connection closes.

use super::*;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decode {
    Length(u64),
    Chunked(Chunk),
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

pub(super) fn framing(
    head_req: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<Decode, H1Error> {
    let te = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .map(|v| v.as_bytes());
    let d = framing_raw(
        head_req,
        status.as_u16(),
        te,
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.as_bytes()),
    )?;
    if te.is_some() {
        // A message with both is a smuggling attempt or a broken server: the length lies.
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(d)
}

/// Framing from the raw fields: `te_last` is the last Transfer-Encoding field, `lengths`
/// every Content-Length field.
pub(crate) fn framing_raw<'a>(
    head_req: bool,
    status: u16,
    te_last: Option<&[u8]>,
    lengths: impl Iterator<Item = &'a [u8]>,
) -> Result<Decode, H1Error> {
    if head_req || status == 204 || status == 304 {
        return Ok(Decode::Length(0));
    }
    if let Some(te) = te_last {
        let last = te.rsplit(|b| *b == b',').next().map(|c| c.trim_ascii());
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Decode::Chunked(Chunk::Size),
            _ => Decode::Eof,
        });
    }
    let mut len: Option<u64> = None;
    for v in lengths {
        for part in v.split(|b| *b == b',') {
            let n =
                parse_decimal(part.trim_ascii()).ok_or(H1Error::Invalid("bad content-length"))?;
            if len.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting content-length values"));
            }
            len = Some(n);
        }
    }
    Ok(len.map_or(Decode::Eof, Decode::Length))
}

/// 1*DIGIT as u64: no sign, no spaces (`u64::from_str` would take "+5").
pub(crate) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(|c| c.is_ascii_digit()) {
        return None;
    }
    b.iter().try_fold(0u64, |n, c| {
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

pub(crate) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// Take the next piece of body out of `buf`.
pub(crate) fn decode_step(decode: &mut Decode, buf: &mut BytesMut) -> Result<Step, H1Error> {
    match decode {
        Decode::Length(0) => Ok(Step::End),
        Decode::Length(n) => {
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let k = (*n).min(buf.len() as u64) as usize;
            *n -= k as u64;
            Ok(Step::Data(buf.split_to(k).freeze()))
        }
        Decode::Eof => {
            if buf.is_empty() {
                Ok(Step::NeedMore)
            } else {
                Ok(Step::Data(buf.split().freeze()))
            }
        }
        Decode::Chunked(state) => loop {
            match state {
                Chunk::Size => {
                    let Some(eol) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = parse_chunk_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    *state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(n) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let k = (*n).min(buf.len() as u64) as usize;
                    *n -= k as u64;
                    if *n == 0 {
                        *state = Chunk::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(k).freeze()));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Invalid("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *state = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *decode = Decode::Length(0);
                        return Ok(Step::End);
                    }
                    // Trailer fields end with an empty line; parse them all at once.
                    let Some(end) = find_subslice(buf, b"\r\n\r\n") else {
                        if buf.len() > MAX_HEAD {
                            return Err(H1Error::HeadTooLarge);
                        }
                        return Ok(Step::NeedMore);
                    };
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let trailers = match httparse::parse_headers(&buf[..end + 4], &mut slots) {
                        Ok(httparse::Status::Complete((_, hs))) => {
                            let mut map = HeaderMap::with_capacity(hs.len());
                            for h in hs {
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(h.name.as_bytes()),
                                    HeaderValue::from_bytes(h.value),
                                ) {
                                    map.append(n, v);
                                }
                            }
                            map
                        }
                        _ => return Err(H1Error::Invalid("malformed trailers")),
                    };
                    buf.advance(end + 4);
                    *decode = Decode::Length(0);
                    return Ok(Step::Trailers(trailers));
                }
            }
        },
    }
}

/// Position of the first CRLF, if within `max` bytes.
pub(super) fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, H1Error> {
    match find_subslice(buf, b"\r\n") {
        Some(i) if i <= max => Ok(Some(i)),
        Some(_) => Err(H1Error::Invalid("chunk-size line too long")),
        None if buf.len() > max => Err(H1Error::Invalid("chunk-size line too long")),
        None => Ok(None),
    }
}

pub(super) fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `1a;ext=1` → 26. Hex digits, then optional extensions, which are ignored.
pub(super) fn parse_chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(H1Error::Invalid("bad chunk size"));
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || rest
            .iter()
            .find(|b| **b != b' ' && **b != b'\t')
            .is_some_and(|b| *b == b';');
    if !rest_ok {
        return Err(H1Error::Invalid("bad chunk size"));
    }
    let s = std::str::from_utf8(&line[..digits]).map_err(|_| H1Error::Invalid("bad chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| H1Error::Invalid("bad chunk size"))
}
