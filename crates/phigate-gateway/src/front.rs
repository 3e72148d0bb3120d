//! The HTTP/1 front door: reads each request head before pingora's proxy
//! logic does, so that requests the HTTP layer refuses are answered *and
//! audited* by phigate, and a client cannot take forever to send a head.
//!
//! pingora's `HttpProxy` reads the request head itself and answers a parse
//! error with a bare 400 — no hook runs, nothing is audited. [`Front`] wraps
//! it as the listening service's [`ServerApp`]:
//!
//! 1. read the head with pingora's own parser ([`ServerSession::read_request`])
//!    through a [`TapStream`] that records the bytes read and enforces
//!    `limits.request_header_timeout` from the first byte of the head;
//! 2. on a parse error, a timeout or a head [`phigate_policy::protocol::check_head`]
//!    refuses (`CONNECT`, missing `Host`, two `Content-Length`s, ...): commit
//!    an audit record (`bad_request` / `request_timeout`, with what could be
//!    read), answer with phigate's JSON deny body and close the connection;
//! 3. otherwise hand the connection to the proxy with the recorded bytes as
//!    a pipelined prefix: pingora parses exactly the same bytes again (so
//!    what it accepts is what was checked) and runs the `ProxyHttp` phases.
//!
//! HTTP/2 connections — ALPN `h2` on TLS listeners, and on plaintext
//! listeners with `h2c: true` a connection that opens with the HTTP/2
//! preface — go to pingora unchanged: their framing is the h2 crate's, and
//! the per-stream checks happen in the `ProxyHttp` phases (one decision and
//! one audit record per stream).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use phigate_audit::AuditRecord;
use phigate_policy::protocol::{check_head, head_summary, HeadSummary};
use phigate_policy::{Decision, Reason};

use crate::proxy::{Gateway, Shared};

/// Keep-alive idle timeout between requests (pingora's default).
const KEEPALIVE_SECS: u64 = 60;

/// The listening service's app: HTTP/1 pre-read + the pingora proxy.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    shared: Arc<Shared>,
    header_timeout: Duration,
    /// Accept HTTP/2 with prior knowledge on this (plaintext) listener.
    h2c: bool,
    shutting_down: AtomicBool,
    shutdown: Notify,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Front {
    pub fn new(proxy: HttpProxy<Gateway>, shared: Arc<Shared>, header_timeout: Duration, h2c: bool) -> Self {
        Front {
            proxy: Arc::new(proxy),
            shared,
            header_timeout,
            h2c,
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
        }
    }

    async fn shutdown_requested(&self) {
        let notified = self.shutdown.notified();
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Audit and answer a request refused before the proxy phases, then
    /// close the connection (its framing can no longer be trusted).
    async fn refuse(&self, session: &mut ServerSession, reason: Reason, detail: &str, head: &[u8]) {
        let summary = head_summary(head);
        let request_id = summary
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let remote_addr = session.client_addr().map(|a| a.to_string());
        let mut decision = Decision::deny(reason);
        decision.detail = Some(detail.to_string());
        let record = refusal_record(&summary, &request_id, reason, remote_addr, &self.shared);
        let committed = match self.shared.audit.reserve() {
            Ok(slot) => match slot.commit(record).await {
                Ok(_) => true,
                Err(e) => {
                    self.shared.note_audit_failure(&e);
                    false
                }
            },
            Err(e) => {
                self.shared.note_audit_failure(&e);
                false
            }
        };
        if !committed {
            decision = Decision::deny(Reason::AuditUnavailable);
        }
        self.shared.metrics.record_refusal(&decision);
        tracing::info!(
            request_id = %request_id,
            decision = "deny",
            reason = decision.reason.as_str(),
            status = decision.deny_status(),
            route = "none",
            detail,
            "request"
        );
        session.set_keepalive(None);
        if let Ok((header, body)) = crate::proxy::deny_response(&decision, &request_id) {
            if session.write_response_header(header).await.is_ok() {
                let _ = session.write_response_body(body, true).await;
                let _ = session.finish_body().await;
            }
        }
        session.shutdown().await;
    }
}

/// The audit record of a request refused by the HTTP layer.
fn refusal_record(
    s: &HeadSummary,
    request_id: &str,
    reason: Reason,
    remote_addr: Option<String>,
    shared: &Shared,
) -> AuditRecord {
    let mut path = s.target.clone().unwrap_or_default();
    let mut truncated = std::collections::BTreeMap::new();
    if let Some(sha256) = &s.target_sha256 {
        // The summary keeps the first bytes only: record the full length and
        // hash, as the audit crate does for every field it cuts.
        truncated.insert(
            "path".to_string(),
            phigate_audit::Truncation {
                length: s.target_len,
                sha256: sha256.clone(),
            },
        );
    }
    if path.is_empty() {
        path = "-".into();
    }
    AuditRecord {
        ts: phigate_audit::now_rfc3339(),
        request_id: request_id.to_string(),
        decision: "deny".into(),
        reason: reason.as_str().into(),
        status: reason.deny_status(),
        method: s.method.clone().unwrap_or_else(|| "-".into()),
        path,
        remote_addr,
        policy_version: shared.policy.load().version().to_string(),
        truncated,
        ..AuditRecord::default()
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        if self.h2c && stream.get_ssl_digest().is_none() {
            // Prior-knowledge HTTP/2 opens with the preface; anything else is
            // HTTP/1 and goes through the pre-read below, the bytes read here
            // replayed first. Reading stops at the first byte that differs,
            // so a short HTTP/1.0 request is not held up. A connection that
            // sends nothing is closed after the keep-alive idle time.
            let mut got = Vec::with_capacity(H2_PREFACE.len());
            let mut chunk = [0u8; 24];
            while got.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&got) {
                let want = H2_PREFACE.len() - got.len();
                let read = tokio::time::timeout(
                    Duration::from_secs(KEEPALIVE_SECS),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut chunk[..want]),
                )
                .await;
                match read {
                    Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
            let replayed: Stream = Box::new(TapStream {
                inner: stream,
                tap: Arc::new(Tap::new(self.header_timeout)),
                replay: Bytes::from(got.clone()),
            });
            if got == H2_PREFACE {
                return self.proxy.process_new(replayed, shutdown).await;
            }
            stream = replayed;
        }
        let tap = Arc::new(Tap::new(self.header_timeout));
        let mut stream: Stream = Box::new(TapStream {
            inner: stream,
            tap: tap.clone(),
            replay: Bytes::new(),
        });
        let mut settings = None;
        loop {
            let mut pre = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => pingora_core::apps::HttpPersistentSettings::apply_to_session(s, &mut pre),
                None => pre.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS)),
            }
            tap.arm();
            let read = tokio::select! {
                biased;
                r = pre.read_request() => r,
                _ = self.shutdown_requested() => return None,
            };
            let (recorded, timed_out) = tap.disarm();
            match read {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    if recorded.is_empty() {
                        // Nothing of a request arrived: a closed or idle connection.
                        return None;
                    }
                    let (reason, detail) = if timed_out {
                        (
                            Reason::RequestTimeout,
                            format!("the request head took longer than {:?}", self.header_timeout),
                        )
                    } else {
                        (
                            Reason::BadRequest,
                            format!("unreadable request head: {:?}", e.etype()),
                        )
                    };
                    self.refuse(&mut pre, reason, &detail, &recorded).await;
                    return None;
                }
            }
            let raw_head = pre.to_h1_raw();
            if let Err(e) = check_head(&raw_head) {
                self.refuse(&mut pre, Reason::BadRequest, &e.to_string(), &raw_head)
                    .await;
                return None;
            }
            let keepalive = pre.get_keepalive();
            let reuses = pre.get_keepalive_reuses_remaining();
            let ServerSession::H1(v1) = pre else { return None };
            let mut session = ServerSession::new_http1(v1.into_inner());
            session.set_keepalive(keepalive);
            session.set_keepalive_reuses_remaining(reuses);
            session.set_pipelined_prefix(BytesMut::from(&recorded[..]));
            let reused: ReusedHttpStream = self.proxy.process_new_http(session, shutdown).await?;
            let (s, next) = reused.consume();
            stream = s;
            settings = next;
        }
    }

    async fn cleanup(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.proxy.http_cleanup().await;
    }
}

/// What a [`TapStream`] records while a request head is being read.
#[derive(Debug)]
struct Tap {
    header_timeout: Duration,
    armed: AtomicBool,
    state: Mutex<TapState>,
}

#[derive(Debug, Default)]
struct TapState {
    buf: Vec<u8>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

impl Tap {
    fn new(header_timeout: Duration) -> Self {
        Tap {
            header_timeout,
            armed: AtomicBool::new(false),
            state: Mutex::new(TapState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start recording a head: the header deadline starts at its first byte.
    fn arm(&self) {
        let mut s = self.lock();
        s.buf.clear();
        s.deadline = None;
        s.timed_out = false;
        self.armed.store(true, Ordering::Release);
    }

    /// Stop recording; the bytes read and whether the deadline passed.
    fn disarm(&self) -> (Bytes, bool) {
        self.armed.store(false, Ordering::Release);
        let mut s = self.lock();
        s.deadline = None;
        (Bytes::from(std::mem::take(&mut s.buf)), s.timed_out)
    }
}

/// A transport stream that records what is read while its [`Tap`] is armed
/// and fails reads once the head deadline has passed; bytes in `replay`
/// (already read from `inner`) are read first.
#[derive(Debug)]
struct TapStream {
    inner: Stream,
    tap: Arc<Tap>,
    replay: Bytes,
}

impl AsyncRead for TapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            let bytes = this.replay.split_to(n);
            buf.put_slice(&bytes);
            if this.tap.armed.load(Ordering::Acquire) {
                let mut s = this.tap.lock();
                if s.buf.is_empty() && s.deadline.is_none() {
                    s.deadline = Some(Box::pin(tokio::time::sleep(this.tap.header_timeout)));
                }
                s.buf.extend_from_slice(&bytes);
            }
            return Poll::Ready(Ok(()));
        }
        if !this.tap.armed.load(Ordering::Acquire) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let mut s = this.tap.lock();
        match polled {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if s.buf.is_empty() && s.deadline.is_none() {
                        s.deadline = Some(Box::pin(tokio::time::sleep(this.tap.header_timeout)));
                    }
                    s.buf.extend_from_slice(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match s.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    s.timed_out = true;
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head deadline passed",
                    )))
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for TapStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for TapStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for TapStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for TapStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for TapStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for TapStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for TapStream {
    /// Peek through the replay buffer: what pingora peeks at (the h2c
    /// preface) may already have been read from `inner`.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.replay.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let mut chunk = [0u8; 1024];
        while self.replay.len() < buf.len() {
            let want = (buf.len() - self.replay.len()).min(chunk.len());
            let n = tokio::io::AsyncReadExt::read(&mut self.inner, &mut chunk[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut more = BytesMut::from(&self.replay[..]);
            more.extend_from_slice(&chunk[..n]);
            self.replay = more.freeze();
        }
        buf.copy_from_slice(&self.replay[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tap_pair(timeout: Duration) -> (TapStream, tokio::io::DuplexStream, Arc<Tap>) {
        let (a, b) = tokio::io::duplex(1024);
        let tap = Arc::new(Tap::new(timeout));
        (
            TapStream {
                inner: Box::new(a),
                tap: tap.clone(),
                replay: Bytes::new(),
            },
            b,
            tap,
        )
    }

    #[tokio::test]
    async fn records_only_while_armed() {
        let (mut s, mut peer, tap) = tap_pair(Duration::from_secs(5));
        peer.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"abc");
        tap.arm();
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(n, 8);
        let (recorded, timed_out) = tap.disarm();
        assert_eq!(&recorded[..], b"GET / HT");
        assert!(!timed_out);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_first_byte() {
        let (mut s, mut peer, tap) = tap_pair(Duration::from_secs(5));
        tap.arm();
        let mut buf = [0u8; 64];
        // Idle before the first byte: no deadline yet (keep-alive is pingora's).
        assert!(tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .is_err());
        peer.write_all(b"GET /slow").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 9);
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let (recorded, timed_out) = tap.disarm();
        assert_eq!(&recorded[..], b"GET /slow");
        assert!(timed_out);
    }
}
