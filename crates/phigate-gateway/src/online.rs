//! `phigate config check --online`: what the configuration cannot tell
//! offline — every issuer's discovery document and key set is fetched, and
//! every upstream address is resolved and connected to (TLS handshake
//! included, with the configured CA, SNI and client certificate).

use std::sync::Arc;
use std::time::Duration;

use phigate_token::{FetchObserver, FetchOutcome, Validator};
use pingora_core::connectors::TransportConnector;

use crate::config::GatewayConfig;
use crate::GatewayError;

/// Longest wait for one upstream connection.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// One thing checked online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineCheck {
    /// `issuer https://idp.example.com`, `upstream fhir fhir-0:8080 (10.0.0.5:8080)`.
    pub what: String,
    /// What went wrong, `None` when it worked.
    pub error: Option<String>,
    /// What was found (`3 keys`, `TLS`), when it worked.
    pub detail: String,
}

struct Quiet;
impl FetchObserver for Quiet {
    fn jwks_fetched(&self, _issuer: &str, _outcome: FetchOutcome, _keys: usize) {}
}

/// Run every online check of `config`.
pub fn check(config: &GatewayConfig) -> Result<Vec<OnlineCheck>, GatewayError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let validator = Validator::new(config.issuers.clone(), Arc::new(Quiet))?;
    let mut out = Vec::new();
    rt.block_on(validator.refresh_all());
    let status = validator.key_status();
    for (issuer, error) in validator.fetch_errors() {
        let keys = status.iter().find(|s| s.0 == issuer).map_or(0, |s| s.1);
        out.push(OnlineCheck {
            what: format!("issuer {issuer}"),
            error: error.or_else(|| (keys == 0).then(|| "no usable keys".to_string())),
            detail: format!("{keys} key(s)"),
        });
    }
    let (upstreams, _services) =
        crate::upstreams::Upstreams::build(config.upstreams.iter().map(|u| u.spec.clone()).collect())?;
    let connector = TransportConnector::new(None);
    for (name, address, peer) in upstreams.all_peers() {
        let what = format!("upstream {name} {address}");
        let peer = match peer {
            Ok(p) => p,
            Err(e) => {
                out.push(OnlineCheck {
                    what,
                    error: Some(e),
                    detail: String::new(),
                });
                continue;
            }
        };
        let tls = peer.is_tls();
        let error = rt
            .block_on(async {
                tokio::time::timeout(CONNECT_LIMIT, probe(&connector, &peer))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {CONNECT_LIMIT:?}")))
            })
            .err();
        out.push(OnlineCheck {
            what,
            error,
            detail: if tls {
                "connected, TLS handshake ok".into()
            } else {
                "connected".into()
            },
        });
    }
    Ok(out)
}

/// Connect (TLS included) and send one `HEAD /`: any HTTP answer counts.
/// (Under TLS 1.3 a server refusing the client certificate says so only
/// after the handshake, at the first read.)
async fn probe(
    connector: &TransportConnector,
    peer: &pingora_core::upstreams::peer::HttpPeer,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connector.new_stream(peer).await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: phigate-config-check\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).await.map_err(|e| {
        format!("no answer after connecting ({e}); a refused client certificate looks like this")
    })?;
    if n == 0 {
        return Err(
            "connection closed without an answer (a refused client certificate looks like this)".into(),
        );
    }
    if !buf[..n].starts_with(b"HTTP/") {
        return Err("the answer is not HTTP".into());
    }
    Ok(())
}
