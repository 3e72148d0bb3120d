//! Reading what the request carries: the bearer token, the request id, the
//! wire request target, an inspected body; mapping token failures to the
//! reason vocabulary; and the deny response. Plain functions over pingora's
//! request types, used by the `ProxyHttp` phases in [`super`].

use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use phigate_policy::{Claims, Decision, Reason, MAX_INSPECTED_BODY};
use phigate_token::{TokenError, VerifiedToken};

/// Map a token validation failure to the shared reason vocabulary.
pub fn token_reason(e: &TokenError) -> Reason {
    match e {
        TokenError::Malformed => Reason::MalformedToken,
        TokenError::UnsupportedAlgorithm => Reason::UnsupportedAlgorithm,
        TokenError::UnknownIssuer => Reason::UnknownIssuer,
        TokenError::UnknownKey => Reason::UnknownKey,
        TokenError::InvalidSignature => Reason::InvalidSignature,
        TokenError::Expired => Reason::TokenExpired,
        TokenError::NotYetValid => Reason::TokenNotYetValid,
        TokenError::WrongAudience => Reason::WrongAudience,
        TokenError::MissingClaim(_) => Reason::MissingClaim,
        TokenError::KeysUnavailable => Reason::KeysUnavailable,
        TokenError::LifetimeExceeded => Reason::TokenLifetimeExceeded,
        TokenError::Inactive => Reason::TokenInactive,
        TokenError::IntrospectionUnavailable => Reason::IntrospectionUnavailable,
    }
}

/// What the `Authorization` header(s) hold.
#[derive(Debug, PartialEq, Eq)]
pub enum BearerHeader<'a> {
    Absent,
    Token(&'a str),
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1).
    Dpop(&'a str),
    /// Two or more `Authorization` headers, or a non-ASCII one.
    Ambiguous,
    /// A scheme other than Bearer, or `Bearer` without a usable token.
    NotBearer,
}

/// Extract the bearer token: exactly one `Authorization` header, scheme
/// `Bearer` (case-insensitive), a token of RFC 6750 `b64token` characters.
/// A token in the query string is never looked at.
pub fn bearer_token(headers: &HeaderMap) -> BearerHeader<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return BearerHeader::Absent;
    };
    if values.next().is_some() {
        return BearerHeader::Ambiguous;
    }
    let Ok(value) = value.to_str() else {
        return BearerHeader::Ambiguous;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return BearerHeader::NotBearer;
    };
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    if !dpop && !scheme.eq_ignore_ascii_case("bearer") {
        return BearerHeader::NotBearer;
    }
    let token = token.trim_start_matches(' ');
    let b64token =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
    if token.is_empty() || !token.bytes().all(b64token) {
        return BearerHeader::NotBearer;
    }
    if dpop {
        BearerHeader::Dpop(token)
    } else {
        BearerHeader::Token(token)
    }
}

/// Accept a caller's `X-Request-Id` only if it is short and plain; otherwise
/// generate one (UUIDv7), so ids can never inject into logs.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .map(|v| v.as_bytes())
        .filter(|v| phigate_policy::protocol::is_plain_request_id(v))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The request-target exactly as the client sent it (HTTP/1.x request line).
///
/// pingora's parsed URI silently drops a `#fragment`; the raw line keeps it so
/// that such requests are refused rather than quietly rewritten.
pub fn wire_target(head: &[u8]) -> Option<&[u8]> {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = head[..line_end].strip_suffix(b"\r").unwrap_or(&head[..line_end]);
    let mut parts = line.split(|b| *b == b' ');
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    (version.starts_with(b"HTTP/") && parts.next().is_none() && !target.is_empty()).then_some(target)
}

/// Read a body that must be inspected before deciding, up to
/// [`MAX_INSPECTED_BODY`] (pingora replays it to the upstream), by
/// `deadline`. A client that asked `Expect: 100-continue` is told to send.
pub async fn read_inspected_body(
    session: &mut Session,
    deadline: Instant,
    sent_continue: &mut bool,
) -> std::result::Result<Vec<u8>, Reason> {
    let limit = MAX_INSPECTED_BODY;
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Reason::PayloadTooLarge);
    }
    if declared == Some(0) {
        return Ok(Vec::new());
    }
    let expects_continue = session
        .req_header()
        .headers
        .get("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|_| Reason::BadRequestBody)?;
        *sent_continue = true;
    }
    session.enable_retry_buffering();
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body()).await;
        match chunk {
            Err(_) => return Err(Reason::RequestTimeout),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(Reason::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => break,
            Ok(Err(_)) => return Err(Reason::BadRequestBody),
        }
    }
    if session.as_downstream().retry_buffer_truncated() {
        return Err(Reason::PayloadTooLarge);
    }
    Ok(body)
}

/// The policy core's view of a verified token.
pub fn claims_of(t: &VerifiedToken) -> Claims {
    Claims {
        issuer: t.issuer.clone(),
        subject: t.subject.clone(),
        client_id: t.client_id.clone(),
        scopes: t.scopes.clone(),
        roles: t.roles.clone(),
        claims: t.claims.clone(),
    }
}

/// The response for a denial: a small JSON body with the reason and request
/// id — never the token, never a hint about whether the resource exists —
/// and `WWW-Authenticate` where RFC 6750 / RFC 9470 ask for it.
pub fn deny_response(decision: &Decision, request_id: &str) -> Result<(Box<ResponseHeader>, Bytes)> {
    let status = decision.deny_status();
    let body = serde_json::json!({ "error": decision.reason.as_str(), "request_id": request_id }).to_string();
    let mut resp = ResponseHeader::build(status, Some(6))?;
    let headers = [
        ("content-type", "application/json".to_string()),
        ("cache-control", "no-store".to_string()),
        ("x-request-id", request_id.to_string()),
        ("content-length", body.len().to_string()),
    ];
    for (k, v) in headers
        .into_iter()
        .chain(decision.www_authenticate().map(|w| ("www-authenticate", w)))
    {
        resp.insert_header(k, v)?;
    }
    if decision.deny_status() == 408 || decision.reason == Reason::BadRequest {
        resp.insert_header("connection", "close")?;
    }
    Ok((Box::new(resp), Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn wire_target_reads_the_request_line() {
        assert_eq!(
            wire_target(b"GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(&b"/a#f"[..])
        );
        assert_eq!(wire_target(b"GET /a HTTP/1.0\n"), Some(&b"/a"[..]));
        assert_eq!(wire_target(b"GET  /a HTTP/1.1\r\n"), None);
        assert_eq!(wire_target(b""), None);
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer_token(&headers(&[])), BearerHeader::Absent);
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            BearerHeader::Token("abc.def.ghi")
        );
        assert_eq!(
            bearer_token(&headers(&["bEaReR abc"])),
            BearerHeader::Token("abc")
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            BearerHeader::Ambiguous
        );
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            BearerHeader::NotBearer
        );
        assert_eq!(bearer_token(&headers(&["Bearer"])), BearerHeader::NotBearer);
        assert_eq!(
            bearer_token(&headers(&["DPoP abc.def"])),
            BearerHeader::Dpop("abc.def")
        );
        assert_eq!(bearer_token(&headers(&["dpop abc"])), BearerHeader::Dpop("abc"));
        assert_eq!(bearer_token(&headers(&["DPoP"])), BearerHeader::NotBearer);
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), BearerHeader::NotBearer);
        assert_eq!(bearer_token(&headers(&["Bearer a\"b"])), BearerHeader::NotBearer);
    }

    #[test]
    fn request_ids_are_sanitised() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id\"{}"));
        assert_ne!(request_id(&h), "bad id\"{}");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn deny_responses_carry_reason_and_request_id() {
        let (h, body) = deny_response(&Decision::deny(Reason::MethodOverride), "r-1").unwrap();
        assert_eq!(h.status.as_u16(), 400);
        assert_eq!(h.headers.get("content-type").unwrap(), "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "method_override");
        assert_eq!(v["request_id"], "r-1");
        let (h, _) = deny_response(&Decision::deny(Reason::MissingToken), "r-2").unwrap();
        assert_eq!(h.headers.get("www-authenticate").unwrap(), "Bearer");
        let (h, _) = deny_response(&Decision::deny(Reason::RequestTimeout), "r-3").unwrap();
        assert_eq!(
            (
                h.status.as_u16(),
                h.headers.get("connection").unwrap().to_str().unwrap()
            ),
            (408, "close")
        );
    }

    #[test]
    fn every_token_error_has_a_401_or_503_reason() {
        for e in [
            TokenError::Malformed,
            TokenError::UnsupportedAlgorithm,
            TokenError::UnknownIssuer,
            TokenError::UnknownKey,
            TokenError::InvalidSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::MissingClaim("exp"),
        ] {
            assert_eq!(token_reason(&e).deny_status(), 401, "{e:?}");
        }
        assert_eq!(token_reason(&TokenError::KeysUnavailable).deny_status(), 503);
    }
}
