//! HTTP/1.x message-level checks on the raw request head.
//!
//! pingora's parser accepts some requests that an intermediary must refuse
//! because the origin behind it may frame or route them differently
//! (RFC 9112 §3.2, §6.3; RFC 9110 §7.6.1). [`check_head`] looks at the head
//! exactly as the client sent it — before any header was merged, dropped or
//! rewritten — and says what is wrong, so the gateway can refuse the request
//! with `400 bad_request` and audit what it could read ([`head_summary`]).
//!
//! Checks:
//! - `CONNECT` (phigate is a reverse proxy, not a tunnel);
//! - an HTTP/1.1 request without exactly one `Host` (an HTTP/1.0 request
//!   may omit it, but not repeat it);
//! - more than one `Content-Length` field, or one listing several values,
//!   even when they are identical;
//! - `Transfer-Encoding` together with `Content-Length`;
//! - header lines that are not `name: value` with a token name (obs-fold,
//!   whitespace before the colon).

use std::fmt;

/// Why a request head is refused. Every variant maps to `400 bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The request line is not `method SP target SP HTTP/x.y`.
    RequestLine,
    /// `CONNECT`: phigate is not a forward proxy.
    Connect,
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// More than one `Host` field.
    DuplicateHost,
    /// More than one `Content-Length` (fields, or values in one field).
    DuplicateContentLength,
    /// Both `Transfer-Encoding` and `Content-Length`.
    TransferEncodingWithContentLength,
    /// A header line that is not `token ":" value`.
    MalformedHeader,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadError::RequestLine => "malformed request line",
            HeadError::Connect => "CONNECT is not supported (phigate is a reverse proxy)",
            HeadError::MissingHost => "HTTP/1.1 request without Host (RFC 9112 §3.2)",
            HeadError::DuplicateHost => "more than one Host header",
            HeadError::DuplicateContentLength => {
                "more than one Content-Length (RFC 9112 §6.3), even if identical"
            }
            HeadError::TransferEncodingWithContentLength => {
                "Transfer-Encoding together with Content-Length (RFC 9112 §6.1)"
            }
            HeadError::MalformedHeader => "malformed header line",
        })
    }
}

impl std::error::Error for HeadError {}

/// The request line's method and target, as far as they could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadSummary {
    /// The method, if the line starts with a token of at most 32 bytes.
    pub method: Option<String>,
    /// The request target (lossy UTF-8, at most 2048 bytes; longer targets
    /// are cut and `target_len` says how long it was).
    pub target: Option<String>,
    /// The full length of the target in bytes.
    pub target_len: usize,
    /// Lowercase hex SHA-256 of the full target, when `target` was cut.
    pub target_sha256: Option<String>,
    /// The `X-Request-Id` header, if present and plain.
    pub request_id: Option<String>,
}

/// Longest target kept by [`head_summary`].
pub const SUMMARY_TARGET_MAX: usize = 2048;

/// Whether a caller-supplied `X-Request-Id` may be used as is: 1 to 128 of
/// `A-Z a-z 0-9 - _ . :` (anything else is replaced by a generated id, so
/// ids can never inject into logs or audit consumers).
pub fn is_plain_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Split raw bytes into lines (LF, optional CR before it) up to the blank
/// line that ends the head.
fn head_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

/// Check a complete raw request head (request line and header lines, the
/// blank line optional). See the module docs for what is refused.
pub fn check_head(raw: &[u8]) -> Result<(), HeadError> {
    let mut lines = head_lines(raw);
    let line = lines.next().ok_or(HeadError::RequestLine)?;
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::RequestLine);
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(HeadError::RequestLine);
    }
    if method == b"CONNECT" {
        return Err(HeadError::Connect);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(HeadError::RequestLine),
    };
    let (mut hosts, mut content_lengths, mut transfer_encoding) = (0usize, 0usize, false);
    for l in lines {
        let colon = l
            .iter()
            .position(|b| *b == b':')
            .ok_or(HeadError::MalformedHeader)?;
        let name = &l[..colon];
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(HeadError::MalformedHeader);
        }
        let value = &l[colon + 1..];
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // `Content-Length: 5, 5` lists two values.
            content_lengths += 1 + value.iter().filter(|b| **b == b',').count();
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
    }
    match hosts {
        0 if http11 => return Err(HeadError::MissingHost),
        0 | 1 => {}
        _ => return Err(HeadError::DuplicateHost),
    }
    if content_lengths > 1 {
        return Err(HeadError::DuplicateContentLength);
    }
    if content_lengths == 1 && transfer_encoding {
        return Err(HeadError::TransferEncodingWithContentLength);
    }
    Ok(())
}

/// What can be read of a (possibly malformed or partial) request head, for
/// the audit record of a refused request. Never fails.
pub fn head_summary(raw: &[u8]) -> HeadSummary {
    let mut lines = head_lines(raw);
    let mut s = HeadSummary::default();
    let Some(line) = lines.next() else { return s };
    let mut parts = line.splitn(3, |b| *b == b' ');
    if let Some(m) = parts.next() {
        if !m.is_empty() && m.len() <= 32 && m.iter().all(|b| is_tchar(*b)) {
            s.method = Some(String::from_utf8_lossy(m).into_owned());
        }
    }
    if let Some(t) = parts.next().filter(|t| !t.is_empty()) {
        s.target_len = t.len();
        if t.len() > SUMMARY_TARGET_MAX {
            use sha2::{Digest, Sha256};
            s.target_sha256 = Some(hex::encode(Sha256::digest(t)));
        }
        let cut = &t[..t.len().min(SUMMARY_TARGET_MAX)];
        s.target = Some(
            String::from_utf8_lossy(cut)
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
        );
    }
    for l in lines {
        let Some(colon) = l.iter().position(|b| *b == b':') else {
            continue;
        };
        if l[..colon].eq_ignore_ascii_case(b"x-request-id") {
            let v = l[colon + 1..].trim_ascii();
            if is_plain_request_id(v) {
                s.request_id = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use HeadError::*;

    #[test]
    fn head_checks_table() {
        let ok = |h: &str| check_head(h.as_bytes());
        let cases: &[(&str, Result<(), HeadError>)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(())),
            ("GET / HTTP/1.0\r\n\r\n", Ok(())),
            ("GET / HTTP/1.1\nHost: a\n\n", Ok(())),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Ok(())),
            (
                "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(()),
            ),
            ("GET / HTTP/1.1\r\n\r\n", Err(MissingHost)),
            ("GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n", Err(DuplicateHost)),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", Err(DuplicateHost)),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                Err(DuplicateContentLength),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
                Err(DuplicateContentLength),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(TransferEncodingWithContentLength),
            ),
            (
                "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
                Err(Connect),
            ),
            ("GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", Err(RequestLine)),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err(RequestLine)),
            ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Err(RequestLine)),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", Err(MalformedHeader)),
            (
                "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                Err(MalformedHeader),
            ),
            ("GET / HTTP/1.1\r\nno-colon\r\n\r\n", Err(MalformedHeader)),
            ("", Err(RequestLine)),
        ];
        for (head, want) in cases {
            assert_eq!(ok(head), *want, "{head:?}");
        }
    }

    #[test]
    fn summary_reads_what_it_can() {
        let s = head_summary(b"GET /fhir/Patient/1 HTTP/1.1\r\nX-Request-Id: abc-1\r\n\r\n");
        assert_eq!(s.method.as_deref(), Some("GET"));
        assert_eq!(s.target.as_deref(), Some("/fhir/Patient/1"));
        assert_eq!(s.request_id.as_deref(), Some("abc-1"));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70_000));
        let s = head_summary(long.as_bytes());
        assert_eq!(s.target.as_ref().map(String::len), Some(SUMMARY_TARGET_MAX));
        assert_eq!(s.target_len, 70_001);
        assert_eq!(s.target_sha256.as_ref().map(String::len), Some(64));
        let s = head_summary(b"\x01\x02 garbage");
        assert_eq!(s.method, None);
        assert_eq!(s.target.as_deref(), Some("garbage"));
        assert_eq!(head_summary(b""), HeadSummary::default());
        let s = head_summary(b"GET /x HTTP/1.1\r\nX-Request-Id: bad id{}\r\n\r\n");
        assert_eq!(s.request_id, None);
    }
}
