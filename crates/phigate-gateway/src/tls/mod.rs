//! Downstream TLS of the proxy listeners: certificate and key loaded and
//! validated at start-up, optional client certificates (mTLS), and hot
//! reload of both without a restart.
//!
//! ```text
//! ListenerTlsSpec ──load()──► ListenerTls ──settings(h2)──► pingora TlsSettings
//!   cert, key, client_ca        ├─ ArcSwap<CertifiedKey>  ◄── CertResolver (every handshake)
//!                               ├─ ArcSwap<client verifier> ◄── ReloadableVerifier (mTLS only)
//!                               └─ reload(): re-read, validate, swap ◄── TlsWatcher (1 s poll)
//! handshake done ──► ClientCertCallback ──► Arc<ClientCert> in SslDigest.extension
//!                                            └─ client_cert(session.digest())
//! ```
//!
//! Everything handed to pingora is validated here first: pingora's own
//! loaders `expect()` on certificates they cannot parse, and its rustls
//! stream parses every *peer* certificate with x509-parser and panics if
//! that fails. The client-certificate verifier therefore refuses, with a
//! TLS alert, any certificate x509-parser cannot read, even one webpki
//! accepted (see [`ReloadableVerifier`]).
//!
//! Why polling and not inotify: certificate rotators (cert-manager through
//! the kubelet, certbot) replace files by swapping a symlink or renaming over
//! them, which inotify watches on the file lose; hashing three small files
//! once a second costs nothing.

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use base64::Engine as _;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{TlsAccept, ALPN};
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::Digest;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// How often [`TlsWatcher`] polls the certificate files by default.
pub const DEFAULT_TLS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No certificate is requested.
    #[default]
    None,
    /// A certificate is requested; a client without one is accepted, a
    /// client with one that does not chain to the CA is refused.
    Optional,
    /// A certificate chaining to the CA is required to complete the handshake.
    Required,
}

/// The TLS files of one listener, as configured (paths not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsSpec {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to; required
    /// unless `client_auth` is [`ClientAuth::None`].
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// Why TLS files were refused. Each message names the setting and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or does not hold what it should.
    #[error("{setting} {}: {problem}", path.display())]
    File {
        /// `tls.cert`, `tls.key` or `tls.client_ca`.
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// The private key is not the key of the leaf certificate.
    #[error(
        "tls.key {}: key does not match the certificate in tls.cert {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// Client authentication is asked for without a CA to check against.
    #[error("tls.client_auth: client certificates are requested but no tls.client_ca is set")]
    MissingClientCa,
    /// pingora refused to build the TLS settings.
    #[error("tls: {0}")]
    Pingora(String),
}

/// The verified client certificate of a connection, as stored in the
/// connection's `SslDigest` by the post-handshake callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// Subject distinguished name in RFC 4514 form, most specific RDN first
    /// (`CN=app-7,O=Example`); empty if the certificate cannot be parsed.
    pub subject: String,
    /// SHA-256 of the leaf DER, base64url without padding: RFC 8705 `x5t#S256`.
    pub sha256: String,
}

impl ClientCert {
    /// Subject and thumbprint of a DER certificate. Never fails: an
    /// unparsable certificate gets an empty subject.
    pub fn from_der(der: &[u8]) -> ClientCert {
        ClientCert {
            subject: subject_of(der).unwrap_or_default(),
            sha256: thumbprint_sha256(der),
        }
    }
}

/// RFC 8705 `x5t#S256` of a DER certificate: base64url (no padding) of its SHA-256.
pub fn thumbprint_sha256(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The client certificate of a downstream connection (`session.digest()`),
/// if it is a TLS connection on which a verified certificate was presented.
pub fn client_cert(digest: Option<&Digest>) -> Option<Arc<ClientCert>> {
    client_cert_of_ssl(digest?.ssl_digest.as_deref()?)
}

/// As [`client_cert`], from the TLS digest itself.
pub fn client_cert_of_ssl(ssl: &SslDigest) -> Option<Arc<ClientCert>> {
    ssl.extension.get::<Arc<ClientCert>>().cloned()
}

/// What one [`ListenerTls::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    /// The files hold what was last loaded or last reported; nothing to do.
    Unchanged,
    /// New certificate (and CA) validated and in force for new handshakes.
    Reloaded,
    /// New content is invalid (e.g. the certificate was replaced but not yet
    /// its key); the old pair stays in force and the content is tried once
    /// more at the next poll before it is reported as [`ReloadResult::Failed`].
    Pending(String),
    /// New content was still invalid at a second poll; the old pair stays in
    /// force. Reported once per content.
    Failed(String),
}

/// The files as read once: what is validated is exactly what was hashed.
struct Snapshot {
    cert: Result<Vec<u8>, TlsError>,
    key: Result<Vec<u8>, TlsError>,
    ca: Option<Result<Vec<u8>, TlsError>>,
}

/// Identity of the files' contents (or of why they could not be read).
type Fingerprint = Vec<Result<[u8; 32], TlsError>>;

impl Snapshot {
    fn read(spec: &ListenerTlsSpec) -> Snapshot {
        let read = |setting, path: &Path| {
            std::fs::read(path).map_err(|e| file_error(setting, path, format!("cannot read: {e}")))
        };
        Snapshot {
            cert: read("tls.cert", &spec.cert),
            key: read("tls.key", &spec.key),
            ca: spec.client_ca.as_deref().map(|p| read("tls.client_ca", p)),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        let hash = |r: &Result<Vec<u8>, TlsError>| {
            r.as_ref().map(|b| Sha256::digest(b).into()).map_err(Clone::clone)
        };
        let mut fp = vec![hash(&self.cert), hash(&self.key)];
        fp.extend(self.ca.as_ref().map(hash));
        fp
    }
}

/// Validated material, ready to swap in.
struct Material {
    key: Arc<CertifiedKey>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

struct ReloadState {
    /// The content in force.
    loaded: Fingerprint,
    /// Invalid content seen at the last poll(s): its error, and whether it
    /// was reported already.
    failing: Option<(Fingerprint, String, bool)>,
}

/// The TLS state of one listener: the certificate in force, the client
/// verifier in force, and what is needed to reload them.
pub struct ListenerTls {
    spec: ListenerTlsSpec,
    provider: Arc<CryptoProvider>,
    key: Arc<ArcSwap<CertifiedKey>>,
    verifier: Option<Arc<ReloadableVerifier>>,
    state: Mutex<ReloadState>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Read and validate the files of `spec`: a parsable certificate chain,
    /// a private key that belongs to its leaf, and (with client
    /// authentication) a non-empty, parsable CA bundle.
    pub fn load(spec: ListenerTlsSpec) -> Result<Arc<ListenerTls>, TlsError> {
        if spec.client_auth != ClientAuth::None && spec.client_ca.is_none() {
            return Err(TlsError::MissingClientCa);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let snap = Snapshot::read(&spec);
        let loaded = snap.fingerprint();
        let material = build(&spec, &provider, snap)?;
        warn_if_not_valid_now(&spec.cert, &material.key);
        let verifier = material
            .verifier
            .map(|v| Arc::new(ReloadableVerifier(ArcSwap::from_pointee(v))));
        Ok(Arc::new(ListenerTls {
            key: Arc::new(ArcSwap::new(material.key)),
            verifier,
            state: Mutex::new(ReloadState {
                loaded,
                failing: None,
            }),
            provider,
            spec,
        }))
    }

    /// The files this listener was loaded from.
    pub fn spec(&self) -> &ListenerTlsSpec {
        &self.spec
    }

    /// The certificate and key in force: what the next handshake serves.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.load_full()
    }

    /// pingora TLS settings for a listener: certificates from this state
    /// (so reloads apply to new handshakes), TLS 1.2 and 1.3, client
    /// certificates per [`ClientAuth`], ALPN `h2` + `http/1.1` if `h2` (else
    /// `http/1.1` only), and the callback that records a verified client
    /// certificate in the connection's `SslDigest` (read with [`client_cert`]).
    pub fn settings(self: &Arc<Self>, h2: bool) -> Result<TlsSettings, TlsError> {
        let callback = ClientCertCallback {
            enabled: self.verifier.is_some(),
        };
        let mut settings =
            TlsSettings::with_callbacks(Box::new(callback)).map_err(|e| TlsError::Pingora(e.to_string()))?;
        settings.set_cert_resolver(Arc::new(CertResolver(self.key.clone())));
        if let Some(v) = &self.verifier {
            settings.set_client_cert_verifier(v.clone());
        }
        settings.set_alpn(if h2 { ALPN::H2H1 } else { ALPN::H1 });
        Ok(settings)
    }

    /// Re-read the files; if their content changed, validate it and swap
    /// it in. Invalid content keeps the old certificate (see
    /// [`ReloadResult`]). Blocking file I/O: call from a blocking context.
    pub fn reload(&self) -> ReloadResult {
        let snap = Snapshot::read(&self.spec);
        let fp = snap.fingerprint();
        // The state is plain data, consistent even after a panic.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if fp == state.loaded {
            state.failing = None;
            return ReloadResult::Unchanged;
        }
        if let Some((failing, error, reported)) = &mut state.failing {
            if *failing == fp {
                // The same bytes validate the same way: no need to rebuild.
                if *reported {
                    return ReloadResult::Unchanged;
                }
                *reported = true;
                return ReloadResult::Failed(error.clone());
            }
        }
        match build(&self.spec, &self.provider, snap) {
            Ok(material) => {
                warn_if_not_valid_now(&self.spec.cert, &material.key);
                self.key.store(material.key);
                if let (Some(slot), Some(new)) = (&self.verifier, material.verifier) {
                    slot.0.store(Arc::new(new));
                }
                state.loaded = fp;
                state.failing = None;
                ReloadResult::Reloaded
            }
            Err(e) => {
                let error = e.to_string();
                state.failing = Some((fp, error.clone(), false));
                ReloadResult::Pending(error)
            }
        }
    }
}

/// Expired or not yet valid certificates are served as configured (clients
/// will refuse them), but the operator is told.
fn warn_if_not_valid_now(cert_path: &Path, key: &CertifiedKey) {
    let Some(der) = key.cert.first() else { return };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return;
    };
    let validity = cert.validity();
    if !validity.is_valid() {
        tracing::warn!(
            cert = %cert_path.display(),
            not_before = %validity.not_before,
            not_after = %validity.not_after,
            "TLS certificate is not valid now; clients will refuse it"
        );
    }
}

fn file_error(setting: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::File {
        setting,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Every certificate of a PEM file, each checked to parse as X.509 (the
/// parser pingora uses); at least one.
fn pem_certificates(
    setting: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        let cert = item.map_err(|e| file_error(setting, path, format!("invalid PEM: {e}")))?;
        if let Err(e) = x509_parser::parse_x509_certificate(&cert) {
            return Err(file_error(
                setting,
                path,
                format!(
                    "certificate #{} is not a valid X.509 certificate: {e}",
                    certs.len() + 1
                ),
            ));
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(file_error(setting, path, "no certificate found"));
    }
    Ok(certs)
}

/// Validate a snapshot into material: chain, key matching the leaf, verifier.
fn build(
    spec: &ListenerTlsSpec,
    provider: &Arc<CryptoProvider>,
    snap: Snapshot,
) -> Result<Material, TlsError> {
    let chain = pem_certificates("tls.cert", &spec.cert, &snap.cert?)?;
    let key_bytes = snap.key?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => file_error("tls.key", &spec.key, "no private key found"),
        e => file_error("tls.key", &spec.key, format!("invalid PEM: {e}")),
    })?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        file_error(
            "tls.key",
            &spec.key,
            format!("unsupported or invalid private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key type whose public key the provider cannot derive cannot be
        // compared; rustls itself accepts it (`CertifiedKey::from_der`).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key: spec.key.clone(),
                cert: spec.cert.clone(),
            })
        }
        Err(e) => {
            return Err(file_error(
                "tls.cert",
                &spec.cert,
                format!("leaf certificate: {e}"),
            ))
        }
    }
    let verifier = match (spec.client_auth, &spec.client_ca, snap.ca) {
        (ClientAuth::None, _, _) => None,
        (auth, Some(path), Some(bytes)) => Some(client_verifier(auth, path, &bytes?, provider)?),
        _ => return Err(TlsError::MissingClientCa),
    };
    Ok(Material {
        key: Arc::new(certified),
        verifier,
    })
}

fn client_verifier(
    auth: ClientAuth,
    path: &Path,
    bytes: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in pem_certificates("tls.client_ca", path, bytes)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| {
            file_error(
                "tls.client_ca",
                path,
                format!("certificate #{} is not a usable CA certificate: {e}", i + 1),
            )
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if auth == ClientAuth::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| {
        file_error(
            "tls.client_ca",
            path,
            format!("cannot verify client certificates: {e}"),
        )
    })
}

/// Serves the certificate in force to every handshake (SNI is not used:
/// one certificate per listener).
#[derive(Debug)]
struct CertResolver(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client-certificate verifier in force, replaceable on reload.
///
/// Two deliberate differences from the webpki verifier it wraps:
/// - no CA names are hinted to clients (`root_hint_subjects` must return a
///   slice borrowed from `self`, which a swappable verifier cannot); an
///   empty list tells clients to send their certificate whatever its issuer
///   (RFC 8446 4.2.4, RFC 5246 7.4.4);
/// - a certificate webpki accepts but x509-parser cannot parse is refused,
///   because pingora's rustls stream would panic parsing it afterwards.
#[derive(Debug)]
pub struct ReloadableVerifier(ArcSwap<Arc<dyn ClientCertVerifier>>);

impl ClientCertVerifier for ReloadableVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.load().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.load().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.load().verify_client_cert(end_entity, intermediates, now)?;
        if x509_parser::parse_x509_certificate(end_entity).is_err() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.load().requires_raw_public_keys()
    }
}

/// Records the verified client certificate after the handshake.
struct ClientCertCallback {
    /// Whether client certificates are verified on this listener; without a
    /// verifier none is requested, so there is nothing to record.
    enabled: bool,
}

#[async_trait]
impl TlsAccept for ClientCertCallback {
    /// Runs once per connection after a successful handshake; the value
    /// returned lands in `SslDigest.extension` (an `Arc<ClientCert>`).
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        if !self.enabled {
            return None;
        }
        let cert = Arc::new(ClientCert::from_der(tls.peer_certificate_der()?));
        Some(Arc::new(cert))
    }
}

/// The subject of a DER certificate in RFC 4514 form; `None` if unparsable.
fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(rfc4514(cert.subject()))
}

/// RFC 4514 string of a name: RDNs in reverse order of the encoding,
/// multi-valued RDNs joined with `+`, the RFC's (and Go's) short names for
/// well-known attribute types, other types as dotted OIDs with `#`-hex DER
/// values (RFC 4514 2.4).
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute(atv: &x509_parser::x509::AttributeTypeAndValue<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
    let oid = atv.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.5" => Some("SERIALNUMBER"),
        "2.5.4.6" => Some("C"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.9" => Some("STREET"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "2.5.4.17" => Some("POSTALCODE"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        _ => None,
    };
    let value = atv.attr_value();
    let text = match value.tag() {
        Tag::BmpString => utf16be(value.data),
        Tag::UniversalString => utf32be(value.data),
        _ => atv.as_str().ok().map(str::to_string),
    };
    match (short, text) {
        (Some(short), Some(text)) => format!("{short}={}", escape_value(&text)),
        (short, _) => {
            let der = value.to_der_vec().unwrap_or_default();
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}=#{hex}", short.unwrap_or(&oid))
        }
    }
}

fn utf16be(b: &[u8]) -> Option<String> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

fn utf32be(b: &[u8]) -> Option<String> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    b.chunks_exact(4)
        .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

/// Escape an attribute value per RFC 4514 2.4.
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Pingora background service: polls every listener's TLS files every
/// `interval` and swaps in valid new certificates.
pub struct TlsWatcher {
    pub listeners: Vec<Arc<ListenerTls>>,
    pub interval: Duration,
    /// Told `"ok"` after each swap and `"error"` after each reported
    /// rejection (the gateway counts them in `phigate_tls_reload_total{result}`).
    pub observe: Arc<dyn Fn(&'static str) + Send + Sync>,
}

impl TlsWatcher {
    /// A watcher polling every [`DEFAULT_TLS_POLL_INTERVAL`].
    pub fn new(listeners: Vec<Arc<ListenerTls>>, observe: Arc<dyn Fn(&'static str) + Send + Sync>) -> Self {
        Self {
            listeners,
            interval: DEFAULT_TLS_POLL_INTERVAL,
            observe,
        }
    }

    /// One poll of every listener, logged and observed. Blocking file I/O.
    pub fn poll_once(&self) {
        poll_listeners(&self.listeners, self.observe.as_ref());
    }
}

fn poll_listeners(listeners: &[Arc<ListenerTls>], observe: &(dyn Fn(&'static str) + Send + Sync)) {
    for l in listeners {
        let cert = l.spec.cert.display();
        match l.reload() {
            ReloadResult::Unchanged => {}
            ReloadResult::Reloaded => {
                let key = l.certified_key();
                let leaf = key.cert.first().and_then(|c| subject_of(c)).unwrap_or_default();
                tracing::info!(cert = %cert, subject = %leaf, "TLS certificate reloaded");
                observe("ok");
            }
            ReloadResult::Pending(error) => {
                tracing::debug!(cert = %cert, %error, "new TLS files not valid (yet); retrying at the next poll");
            }
            ReloadResult::Failed(error) => {
                tracing::error!(cert = %cert, %error, "TLS reload rejected; keeping the certificate in force");
                observe("error");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for TlsWatcher {
    /// Runs from server start until `shutdown` flips to `true`.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.listeners.is_empty() {
            return;
        }
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            listeners = self.listeners.len(),
            interval_ms = self.interval.as_millis() as u64,
            "watching TLS certificate files"
        );
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                _ = ticks.tick() => {}
            }
            let listeners = self.listeners.clone();
            let observe = self.observe.clone();
            // File reads and key parsing are blocking work.
            let done =
                tokio::task::spawn_blocking(move || poll_listeners(&listeners, observe.as_ref())).await;
            if let Err(e) = done {
                tracing::error!(error = %e, "TLS reload task failed; keeping the certificates in force");
            }
        }
        tracing::info!("TLS watcher stopped");
    }
}

#[cfg(test)]
mod tests;
