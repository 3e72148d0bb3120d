//! Test helpers: sample records and a running spool.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::{AuditRecord, CommitInfo, LogoutDecision, LogoutRecord, LogoutSource, Spool, SpoolOptions};

pub fn access(i: usize) -> AuditRecord {
    AuditRecord {
        ts: crate::now_rfc3339(),
        request_id: format!("req-{i}"),
        decision: "allow".into(),
        reason: "allowed".into(),
        status: 200,
        method: "GET".into(),
        path: format!("/fhir/Patient/{i}"),
        route: Some("/fhir/Patient/{id}".into()),
        sub: Some("u".into()),
        client_id: Some("c".into()),
        iss: Some("i".into()),
        scopes_granted: vec!["user/Patient.rs".into()],
        scopes_required: vec!["user/Patient.rs".into()],
        upstream_status: Some(200),
        duration_ms: 1.5 + i as f64 / 7.0,
        remote_addr: Some("127.0.0.1:1".into()),
        policy_version: "sha256:x".into(),
        patient: Some(i.to_string()),
        break_glass: false,
        justification: None,
        shadow_decision: None,
        ..AuditRecord::default()
    }
}

/// A back-channel logout record: accepted for even `i`, refused (bad
/// signature) for odd ones.
pub fn logout(i: usize) -> LogoutRecord {
    let accepted = i.is_multiple_of(2);
    LogoutRecord {
        issuer: Some("https://idp.example.org/realms/clinic".into()),
        sid: Some(format!("sid-{i}")),
        sub: Some(format!("Practitioner/pr-{i:05}")),
        jti: Some(format!("jti-{i}")),
        client_ip: Some("10.0.0.7".into()),
        detail: (!accepted).then(|| "signature does not verify with any key of the issuer".into()),
        ..LogoutRecord::new(
            format!("logout-{i}"),
            LogoutSource::Backchannel,
            if accepted {
                LogoutDecision::Allow
            } else {
                LogoutDecision::Deny
            },
            if accepted {
                "logged_out"
            } else {
                "logout_token_bad_signature"
            },
            if accepted { 200 } else { 400 },
        )
    }
}

/// A gateway-like access record (~750 bytes as a spool line): UUID request
/// ids, varied users, clients, resources and patients, SMART scope lists,
/// user agents, client addresses and durations, drawn from a seeded
/// generator so runs are reproducible.
pub fn realistic(i: usize) -> AuditRecord {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const TYPES: [&str; 6] = [
        "Observation",
        "Patient",
        "Condition",
        "MedicationRequest",
        "Encounter",
        "DiagnosticReport",
    ];
    const CLIENTS: [&str; 4] = [
        "ehr-web",
        "mobile-patient-app",
        "lab-integration",
        "analytics-batch",
    ];
    const AGENTS: [&str; 3] = ["okhttp/4.12.0", "python-requests/2.32.3", "ehr-web/5.2.1 (fetch)"];
    let ty = TYPES[(next() % 6) as usize];
    let client = CLIENTS[(next() % 4) as usize];
    let user = next() % 400;
    // A clinic's working set: 5,000 patients, their ids UUID-shaped.
    let p = next() % 5_000;
    let patient = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        (p.wrapping_mul(0x2545_f491)) as u32,
        (p * 7919) as u16,
        p % 0x1000,
        (p * 31) % 0x1000,
        p.wrapping_mul(0x9e37_79b9_7f4a) % (1 << 48)
    );
    let read = next() % 10 < 8;
    let deny = next() % 20 == 0;
    let (method, path) = if read && next() % 3 == 0 {
        ("GET", format!("/fhir/r4/{ty}"))
    } else if read {
        ("GET", format!("/fhir/r4/{ty}/{:x}", next() % (1 << 40)))
    } else {
        ("POST", format!("/fhir/r4/{ty}"))
    };
    let action = if read { "rs" } else { "cu" };
    let status = if deny {
        403
    } else if read {
        200
    } else {
        201
    };
    AuditRecord {
        ts: crate::now_rfc3339(),
        request_id: uuid::Uuid::now_v7().to_string(),
        decision: if deny { "deny" } else { "allow" }.into(),
        reason: if deny { "insufficient_scope" } else { "allowed" }.into(),
        status,
        method: method.into(),
        path,
        route: Some(format!("fhir-{}", ty.to_lowercase())),
        sub: Some(format!("Practitioner/pr-{user:05}")),
        client_id: Some(client.into()),
        iss: Some("https://idp.example.org/realms/clinic".into()),
        scopes_granted: vec![
            "openid".into(),
            "fhirUser".into(),
            format!("user/{ty}.{action}"),
            "user/Patient.rs".into(),
        ],
        scopes_required: vec![
            format!("patient/{ty}.{}", &action[..1]),
            format!("user/{ty}.{}", &action[..1]),
        ],
        scope_used: if deny {
            vec![]
        } else {
            vec![format!("user/{ty}.{action}")]
        },
        upstream_status: (!deny).then_some(status),
        duration_ms: (next() % 250_000) as f64 / 1000.0,
        remote_addr: Some(format!(
            "10.{}.{}.{}:{}",
            next() % 4,
            next() % 256,
            next() % 256,
            30_000 + next() % 30_000
        )),
        policy_version: "sha256:3f1c0de9a4b2".into(),
        patient: Some(patient),
        user_agent: Some(AGENTS[(next() % 3) as usize].into()),
        ..AuditRecord::default()
    }
}

/// A spool with its worker running on the current runtime.
pub struct Running {
    pub spool: Spool,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(dir: &Path, mut options: SpoolOptions) -> Running {
        options.shutdown_idle = Duration::ZERO;
        let (spool, worker) = Spool::open(dir, options).unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(worker.run(rx));
        Running { spool, stop, task }
    }

    /// Commit `n` records (`first..first+n`), all awaited.
    pub async fn commit(&self, first: usize, n: usize) -> Vec<CommitInfo> {
        let mut out = Vec::new();
        for i in first..first + n {
            let slot = self.spool.reserve().unwrap();
            out.push(slot.commit(access(i)).await.unwrap());
        }
        out
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

impl Running {
    /// Commit one record and await it.
    pub async fn commit_record(&self, record: AuditRecord) -> CommitInfo {
        self.spool.reserve().unwrap().commit(record).await.unwrap()
    }

    /// Commit one logout record and await it.
    pub async fn commit_logout(&self, record: LogoutRecord) -> CommitInfo {
        self.spool.reserve().unwrap().commit_logout(record).await.unwrap()
    }
}

/// The lines of every segment in `dir`, as (file name, lines).
pub fn segments(dir: &Path) -> Vec<(String, Vec<String>)> {
    crate::segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut crate::segment::open_segment(&p).unwrap(), &mut text).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, text.lines().map(str::to_owned).collect())
        })
        .collect()
}

/// Copy a spool directory (segments only) into a fresh temporary directory.
pub fn copy_spool(dir: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    for (_, p) in crate::segment::list_segments(dir).unwrap() {
        std::fs::copy(&p, out.path().join(p.file_name().unwrap())).unwrap();
    }
    out
}
