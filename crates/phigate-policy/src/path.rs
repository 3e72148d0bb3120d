//! Request-target canonicalisation.
//!
//! The gateway authorises exactly the path it forwards, so the request target
//! is canonicalised once, here, and every ambiguity is rejected instead of
//! being interpreted. Rules (see Envoy CVE-2019-9901 and CVE-2021-29492 in
//! shared/REFERENCES.md):
//!
//! - only origin-form targets (`/path?query`); no fragment (`#`);
//! - `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded; other escapes are kept with upper-case hex digits;
//! - encoded `/`, `\` and NUL (`%2F`, `%5C`, `%00`) are rejected, as is an
//!   encoded `%` that still forms an escape after one decode (`%252F`);
//! - dot segments (`.`, `..`, including `%2e` forms), empty segments (`//`,
//!   trailing `/`), `;` path parameters, backslashes, control characters,
//!   spaces and non-ASCII bytes are rejected.
//!
//! Matching afterwards is case-sensitive.

use std::fmt;

/// A request target that passed canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    /// The canonical path, always starting with `/`.
    pub path: String,
    /// The raw query string without the `?`, if any.
    pub query: Option<String>,
}

impl CanonicalTarget {
    /// The target to forward upstream: canonical path plus the query.
    pub fn to_request_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was rejected. Every variant maps to HTTP 400 with
/// reason `bad_request_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    Fragment,
    EncodedSlash,
    EncodedBackslash,
    EncodedNul,
    DoubleEncoding,
    InvalidEscape,
    DotSegment,
    EmptySegment,
    PathParameter,
    Backslash,
    InvalidCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PathError::NotOriginForm => "request target must start with '/'",
            PathError::Fragment => "fragment in request target",
            PathError::EncodedSlash => "encoded '/' (%2F) in path",
            PathError::EncodedBackslash => "encoded '\\' (%5C) in path",
            PathError::EncodedNul => "encoded NUL (%00) in path",
            PathError::DoubleEncoding => "double-encoded '%' in path",
            PathError::InvalidEscape => "invalid percent-escape in path",
            PathError::DotSegment => "dot segment in path",
            PathError::EmptySegment => "empty segment in path",
            PathError::PathParameter => "';' path parameter in path",
            PathError::Backslash => "'\\' in path",
            PathError::InvalidCharacter => "invalid character in request target",
        };
        f.write_str(s)
    }
}

impl std::error::Error for PathError {}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed literally in a path segment (RFC 3986 `pchar` minus
/// `;` which we reject as a path parameter, and minus `%` handled apart).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// True if decoding every escape once leaves a `%XX` escape behind
/// (`%252F`, `%25%32F`, ...): a second decoder downstream would see it.
fn still_escaped_after_one_decode(bytes: &[u8]) -> bool {
    let mut once = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) {
                once.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        once.push(bytes[i]);
        i += 1;
    }
    once.windows(3)
        .any(|w| w[0] == b'%' && hex_val(w[1]).is_some() && hex_val(w[2]).is_some())
}

/// Canonicalise a raw request target (`/path?query`).
pub fn canonicalize(target: &str) -> Result<CanonicalTarget, PathError> {
    if target.contains('#') {
        return Err(PathError::Fragment);
    }
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !raw_path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if let Some(q) = query {
        if q.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'\\') {
            return Err(PathError::InvalidCharacter);
        }
    }
    let bytes = raw_path.as_bytes();
    let mut out = String::with_capacity(raw_path.len());
    // Decoded bytes of the current segment, to spot dot segments that were
    // (partly) percent-encoded.
    let mut segment = String::new();
    let mut i = 1; // skip the leading '/'
    out.push('/');
    loop {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                if segment.is_empty() {
                    // Empty segment: `//`, or a trailing `/` (the root `/` alone is fine).
                    if !(b.is_none() && out == "/") {
                        return Err(PathError::EmptySegment);
                    }
                } else if segment == "." || segment == ".." {
                    return Err(PathError::DotSegment);
                }
                segment.clear();
                match b {
                    None => break,
                    Some(_) => {
                        out.push('/');
                        i += 1;
                        continue;
                    }
                }
            }
            Some(b'%') => {
                let (h, l) = match (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::InvalidEscape),
                };
                let decoded = h * 16 + l;
                match decoded {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::EncodedNul),
                    b'%' => {
                        out.push_str("%25");
                        segment.push_str("%25");
                    }
                    d if is_unreserved(d) => {
                        out.push(d as char);
                        segment.push(d as char);
                    }
                    d if d < 0x20 || d == 0x7f => return Err(PathError::InvalidCharacter),
                    d => {
                        let esc = format!("%{d:02X}");
                        out.push_str(&esc);
                        segment.push_str(&esc);
                    }
                }
                i += 3;
            }
            Some(b';') => return Err(PathError::PathParameter),
            Some(b'\\') => return Err(PathError::Backslash),
            Some(c) if is_path_char(c) => {
                out.push(c as char);
                segment.push(c as char);
                i += 1;
            }
            Some(_) => return Err(PathError::InvalidCharacter),
        }
    }
    if raw_path.contains("%25") && still_escaped_after_one_decode(bytes) {
        return Err(PathError::DoubleEncoding);
    }
    Ok(CanonicalTarget {
        path: out,
        query: query.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_canonicalises() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/fhir/Patient/123", "/fhir/Patient/123", None),
            (
                "/fhir/Observation?patient=123&_count=10",
                "/fhir/Observation",
                Some("patient=123&_count=10"),
            ),
            ("/fhir/%50atient/1", "/fhir/Patient/1", None),
            ("/fhir/Patient/a%7eb", "/fhir/Patient/a~b", None),
            ("/fhir/Patient/a%3ab", "/fhir/Patient/a%3Ab", None),
            ("/fhir/Patient/a%20b", "/fhir/Patient/a%20b", None),
            ("/fhir/x%25", "/fhir/x%25", None),
            ("/fhir/Patient/$everything", "/fhir/Patient/$everything", None),
            ("/fhir/.well-known", "/fhir/.well-known", None),
            ("/fhir/...", "/fhir/...", None),
            ("/fhir/Observation?", "/fhir/Observation", Some("")),
        ];
        for (input, path, query) in cases {
            let t = canonicalize(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.path, *path, "{input}");
            assert_eq!(t.query.as_deref(), *query, "{input}");
        }
    }

    #[test]
    fn rejects_ambiguous_targets() {
        use PathError::*;
        let cases: &[(&str, PathError)] = &[
            ("/fhir/Patient%2F123", EncodedSlash),
            ("/fhir/Patient%2f123", EncodedSlash),
            ("/fhir/Patient%5C123", EncodedBackslash),
            ("/fhir/Patient%00", EncodedNul),
            ("/fhir/Patient%252F123", DoubleEncoding),
            ("/fhir/Patient%25%32F", DoubleEncoding),
            ("/fhir/Patient%25%32%46", DoubleEncoding),
            ("/fhir/../admin", DotSegment),
            ("/fhir/./Patient", DotSegment),
            ("/fhir/%2e%2e/admin", DotSegment),
            ("/fhir/.%2E/admin", DotSegment),
            ("/fhir/%2e/x", DotSegment),
            ("/fhir/..", DotSegment),
            ("/fhir//Patient", EmptySegment),
            ("//fhir/Patient", EmptySegment),
            ("/fhir/Patient/", EmptySegment),
            ("/fhir/Patient;jsessionid=1/1", PathParameter),
            ("/fhir/Patient/1#frag", Fragment),
            ("/fhir/Patient/1?x=1#frag", Fragment),
            ("/fhir\\Patient", Backslash),
            ("fhir/Patient", NotOriginForm),
            ("http://evil/fhir/Patient", NotOriginForm),
            ("*", NotOriginForm),
            ("", NotOriginForm),
            ("/fhir/%zz", InvalidEscape),
            ("/fhir/%4", InvalidEscape),
            ("/fhir/Pat ient", InvalidCharacter),
            ("/fhir/Pat\u{e9}", InvalidCharacter),
            ("/fhir/%0a", InvalidCharacter),
            ("/fhir/x?a=\u{1}", InvalidCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(canonicalize(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn forwards_exactly_the_canonical_target() {
        let t = canonicalize("/fhir/%50atient/1?_format=json").unwrap();
        assert_eq!(t.to_request_target(), "/fhir/Patient/1?_format=json");
    }
}
