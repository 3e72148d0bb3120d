//! Test helpers: sample records and a running spool.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::{AuditRecord, CommitInfo, Spool, SpoolOptions};

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
}

/// The lines of every segment in `dir`, as (file name, lines).
pub fn segments(dir: &Path) -> Vec<(String, Vec<String>)> {
    crate::segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| {
            let text = std::fs::read_to_string(&p).unwrap();
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
