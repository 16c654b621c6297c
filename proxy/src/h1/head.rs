//! Response heads: parsing (as `http` types for the hyper path, raw for the fast path) and
//! the keep-alive rules.

use super::*;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
}

/// A response head as bytes plus where its parts are: what the fast path copies from.
pub(crate) struct RawHead {
    pub bytes: Bytes,
    pub status: u16,
    pub http11: bool,
    pub reason: (usize, usize),
    /// (name start, name end, value start, value end) per field, in order.
    pub fields: Vec<(usize, usize, usize, usize)>,
}

impl RawHead {
    pub fn name(&self, f: &(usize, usize, usize, usize)) -> &[u8] {
        &self.bytes[f.0..f.1]
    }
    pub fn value(&self, f: &(usize, usize, usize, usize)) -> &[u8] {
        &self.bytes[f.2..f.3]
    }
    /// Values of the fields called `name` (lowercase), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| self.name(f).eq_ignore_ascii_case(name.as_bytes()))
            .map(move |f| self.value(f))
    }
}

/// Parse a response head from the front of `buf`, consuming it. `None`: not complete yet.
pub(super) fn parse_raw_head(buf: &mut BytesMut) -> Result<Option<RawHead>, H1Error> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("more than 128 headers"))
        }
        Err(_) => return Err(H1Error::Invalid("malformed status line or header")),
    };
    let status = resp
        .code
        .filter(|c| (100..=999).contains(c))
        .ok_or(H1Error::Invalid("bad status code"))?;
    let base = buf.as_ptr() as usize;
    let at = |p: *const u8| p as usize - base;
    let reason = resp.reason.unwrap_or("");
    let reason = (at(reason.as_ptr()), at(reason.as_ptr()) + reason.len());
    let fields = resp
        .headers
        .iter()
        .map(|h| {
            let (n, v) = (at(h.name.as_ptr()), at(h.value.as_ptr()));
            (n, n + h.name.len(), v, v + h.value.len())
        })
        .collect();
    Ok(Some(RawHead {
        http11: resp.version != Some(0),
        bytes: buf.split_to(len).freeze(),
        status,
        reason,
        fields,
    }))
}

/// Parse a response head into `http` types (see [`parse_raw_head`]).
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    let Some(raw) = parse_raw_head(buf)? else {
        return Ok(None);
    };
    let status =
        StatusCode::from_u16(raw.status).map_err(|_| H1Error::Invalid("bad status code"))?;
    let mut headers = HeaderMap::with_capacity(raw.fields.len());
    for f in &raw.fields {
        let name =
            HeaderName::from_bytes(raw.name(f)).map_err(|_| H1Error::Invalid("bad header name"))?;
        // Values share the head's buffer instead of being copied one by one.
        let value = HeaderValue::from_maybe_shared(raw.bytes.slice(f.2..f.3))
            .map_err(|_| H1Error::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version: if raw.http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        headers,
    }))
}

/// Whether a comma-separated header value lists `token`.
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

pub(super) fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    keep_alive_raw(
        version == Version::HTTP_11,
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

pub(crate) fn keep_alive_raw<'a>(
    http11: bool,
    mut connection: impl Iterator<Item = &'a [u8]>,
) -> bool {
    if http11 {
        !connection.any(|v| has_token(v, "close"))
    } else {
        connection.any(|v| has_token(v, "keep-alive"))
    }
}
