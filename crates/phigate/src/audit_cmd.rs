//! `phigate audit …`: verify, report, schema, keygen, segments. The logic
//! lives in `phigate-audit`; this is argument handling and output.
//!
//! Exit codes: 0 success; 1 the chain is broken (`verify`); 2 the command
//! could not run (unreadable path, bad key, bad `--since`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use phigate_audit::{report, segment, verify, SigningKey, VerifyKey};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain of spool directories or segment files (taken in
    /// seq order). Exit 0 if intact; exit 1 naming the first bad record
    /// (file:line, seq) for any edit, deletion, reordering, insertion,
    /// duplicated line or truncation. Reports recovery gaps and checkpoints.
    Verify {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Ed25519 public key (PEM, or a private key file) that checks
        /// checkpoint signatures; repeat for rotated keys.
        #[arg(long = "checkpoint-key")]
        checkpoint_keys: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Per client and per subject: scopes granted vs used (over-granted
    /// clients flagged), denials by reason, break-glass events with their
    /// justifications, patients accessed (count only).
    Report {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Only records at or after this time: RFC 3339, or a duration before now (`24h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also write the report as one self-contained HTML file (inline
        /// SVG charts, no scripts or network): requests over time, denials,
        /// top clients and subjects, break-glass, least privilege.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Print the JSON Schema of spool records, or write `audit-record.schema.json` into a directory.
    Schema {
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Generate an Ed25519 checkpoint signing key (PKCS#8 PEM, mode 0600);
    /// prints the public key (PEM) for `verify --checkpoint-key`.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// List a spool's segments with their seq ranges, sizes on disk (and
    /// whether compressed, with the uncompressed size), and which ones every
    /// sink has forwarded (safe to archive or delete; never the last).
    Segments {
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Anomalies with evidence: breadth of patients, off-hours access,
    /// probing denials, break-glass use, restricted patients, dormant
    /// credentials, one subject from many addresses. Verifies the chain
    /// first (refused when broken unless `--allow-broken`). Exit 0 reviewed;
    /// 1 the chain is broken; 2 the review could not run.
    Review(crate::review_cmd::ReviewArgs),
    /// Export records: `--format fhir` prints a FHIR Bundle (type
    /// collection) of IHE BALP AuditEvents; `--format jsonl` the raw lines.
    Export {
        /// Spool directories or segment files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "fhir")]
        format: ExportFormat,
        /// Only records at or after this time: RFC 3339, or a duration before now (`24h`, `7d`).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Fhir,
    Jsonl,
}

pub fn run(command: AuditCommand) -> ExitCode {
    ExitCode::from(match command {
        AuditCommand::Verify {
            paths,
            checkpoint_keys,
            json,
        } => verify_cmd(&paths, &checkpoint_keys, json),
        AuditCommand::Report {
            paths,
            since,
            json,
            html,
        } => match html {
            Some(out) => match html_cmd(&paths, since.as_deref(), &out) {
                0 => report_cmd(&paths, since.as_deref(), json),
                failed => failed,
            },
            None => report_cmd(&paths, since.as_deref(), json),
        },
        AuditCommand::Schema { write } => schema_cmd(write.as_deref()),
        AuditCommand::Keygen { out } => keygen_cmd(&out),
        AuditCommand::Segments { dir, json } => segments_cmd(&dir, json),
        AuditCommand::Export { paths, format, since } => export_cmd(&paths, format, since.as_deref()),
        AuditCommand::Review(args) => crate::review_cmd::run(&args),
    })
}

/// Every line of the given spool directories / segment files (plain or
/// zstd-compressed, decoded as a stream), in seq order.
fn read_records(paths: &[PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    use std::io::BufRead;
    let files = verify::segment_files(paths).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for f in files {
        let reader = segment::open_segment(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
            let v = serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
            out.push(v);
        }
    }
    Ok(out)
}

fn export_cmd(paths: &[PathBuf], format: ExportFormat, since: Option<&str>) -> u8 {
    let since = match since.map(phigate_audit::report::parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return cannot("export", e),
    };
    let records = match read_records(paths) {
        Ok(r) => r,
        Err(e) => return cannot("export", e),
    };
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let selected: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| match since {
            None => true,
            Some(t) => r["ts"]
                .as_str()
                .and_then(|ts| time::OffsetDateTime::parse(ts, rfc3339).ok())
                .is_some_and(|ts| ts >= t),
        })
        .collect();
    // Written without `println!`: a reader that stops early (`| head`)
    // closes the pipe, which ends the export quietly instead of panicking.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match format {
        ExportFormat::Fhir => writeln!(
            out,
            "{}",
            to_json(serde_json::to_string_pretty(&phigate_sinks::export_fhir(
                selected
            )))
        ),
        ExportFormat::Jsonl => selected.iter().try_for_each(|r| writeln!(out, "{r}")),
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => cannot("export", e),
    }
}

fn cannot(what: &str, e: impl std::fmt::Display) -> u8 {
    eprintln!("phigate audit {what}: {e}");
    2
}

fn to_json(v: serde_json::Result<String>) -> String {
    v.unwrap_or_default()
}

fn verify_cmd(paths: &[PathBuf], key_files: &[PathBuf], json: bool) -> u8 {
    let mut keys = Vec::new();
    for f in key_files {
        match VerifyKey::from_file(f) {
            Ok(k) => keys.push(k),
            Err(e) => return cannot("verify", e),
        }
    }
    let report = match verify::verify(paths, &keys) {
        Ok(r) => r,
        Err(e) => return cannot("verify", e),
    };
    if json {
        println!("{}", to_json(serde_json::to_string_pretty(&report)));
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        0
    } else {
        1
    }
}

fn report_cmd(paths: &[PathBuf], since: Option<&str>, json: bool) -> u8 {
    let since = match since.map(report::parse_since) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return cannot("report", format!("--since: {e}")),
        None => None,
    };
    match report::report(paths, since) {
        Ok(r) if json => println!("{}", to_json(serde_json::to_string_pretty(&r))),
        Ok(r) => print!("{}", r.to_text()),
        Err(e) => return cannot("report", e),
    }
    0
}

/// `report --html OUT`: the self-contained HTML report (the chain is
/// verified for its banner; a broken chain is shown, not refused).
fn html_cmd(paths: &[PathBuf], since: Option<&str>, out: &Path) -> u8 {
    let since = match since.map(report::parse_since) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return cannot("report", format!("--since: {e}")),
        None => None,
    };
    let r = match phigate_audit::html::build_report(paths, since, "phigate audit report") {
        Ok(r) => r,
        Err(e) => return cannot("report", e),
    };
    if let Err(e) = std::fs::write(out, phigate_audit::render_html(&r)) {
        return cannot("report", format!("{}: {e}", out.display()));
    }
    eprintln!(
        "wrote {} ({} record(s), chain {})",
        out.display(),
        r.records,
        if r.chain_verified { "verified" } else { "BROKEN" }
    );
    0
}

fn schema_cmd(write: Option<&Path>) -> u8 {
    let schema = phigate_audit::record_schema();
    match write {
        None => {
            print!("{schema}");
            0
        }
        Some(dir) => {
            let path = dir.join("audit-record.schema.json");
            match std::fs::write(&path, schema) {
                Ok(()) => {
                    println!("wrote {}", path.display());
                    0
                }
                Err(e) => cannot("schema", format!("{}: {e}", path.display())),
            }
        }
    }
}

fn keygen_cmd(out: &Path) -> u8 {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = match SigningKey::generate() {
        Ok(k) => k,
        Err(e) => return cannot("keygen", e),
    };
    let pem = match key.to_pkcs8_pem() {
        Ok(p) => p,
        Err(e) => return cannot("keygen", e),
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        return cannot("keygen", format!("{}: {e}", out.display()));
    }
    eprintln!("wrote {} (key id {})", out.display(), key.key_id());
    print!("{}", key.verify_key().to_pem());
    0
}

fn segments_cmd(dir: &Path, json: bool) -> u8 {
    let infos = match segment::segment_infos(dir) {
        Ok(i) => i,
        Err(e) => return cannot("segments", format!("{}: {e}", dir.display())),
    };
    let cursors = segment::read_cursors(dir).unwrap_or_default();
    if json {
        println!(
            "{}",
            to_json(serde_json::to_string_pretty(
                &serde_json::json!({ "segments": infos, "cursors": cursors })
            ))
        );
        return 0;
    }
    if cursors.is_empty() {
        println!(
            "no sink cursors in {}/cursors: nothing is known to be forwarded",
            dir.display()
        );
    }
    for (sink, seq) in &cursors {
        println!("cursor {sink}: seq {seq}");
    }
    print!("{}", segments_text(&infos));
    0
}

fn segments_text(infos: &[segment::SegmentInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (mut disk, mut text) = (0u64, 0u64);
    for s in infos {
        let last = s.last_seq.map_or("(current)".to_string(), |l| l.to_string());
        let state = if s.forwarded { "forwarded" } else { "keep" };
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let size = match (s.compressed, s.uncompressed_bytes) {
            (true, Some(u)) => format!(
                "{} bytes zstd ({u} uncompressed, {:.1}x)",
                s.bytes,
                u as f64 / s.bytes.max(1) as f64
            ),
            (true, None) => format!("{} bytes zstd", s.bytes),
            (false, _) => format!("{} bytes", s.bytes),
        };
        let _ = write!(
            out,
            "{}  seq {}..{last}  {size}  {state}",
            file_name(&s.path),
            s.first_seq
        );
        if let Some(other) = &s.other_copy {
            let _ = write!(
                out,
                "  (also {}: an interrupted compression; remove both together)",
                file_name(other)
            );
        }
        out.push('\n');
        disk += s.bytes;
        text += s.uncompressed_bytes.unwrap_or(s.bytes);
    }
    let _ = writeln!(
        out,
        "total: {} segment(s), {disk} bytes on disk, {text} bytes of records",
        infos.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use phigate_audit::chain;

    /// A two-record spool written by hand with the public chain functions.
    fn spool(dir: &Path) -> PathBuf {
        let mut prev = chain::GENESIS_HASH.to_string();
        let mut text = String::new();
        for seq in 1..=2u64 {
            let v = serde_json::json!({
                "v": 1, "kind": "recovery", "seq": seq, "event_id": format!("e{seq}"),
                "prev_hash": prev, "ts": "2026-01-01T00:00:00.000Z", "segment": "s",
                "truncated_from": 0, "truncated_to": 1, "reason": "torn last line"
            });
            let (line, hash) = chain::seal(&prev, &v);
            text.push_str(&line);
            prev = hash;
        }
        let path = dir.join(segment::segment_file_name(1));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn verify_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let seg = spool(dir.path());
        assert_eq!(verify_cmd(&[dir.path().to_path_buf()], &[], false), 0);
        assert_eq!(verify_cmd(std::slice::from_ref(&seg), &[], true), 0);
        let text = std::fs::read_to_string(&seg).unwrap();
        std::fs::write(&seg, text.replace("\"e2\"", "\"e3\"")).unwrap();
        assert_eq!(verify_cmd(&[seg], &[], false), 1);
        assert_eq!(verify_cmd(&[dir.path().join("missing")], &[], false), 2);
        assert_eq!(
            verify_cmd(&[dir.path().to_path_buf()], &[dir.path().join("nokey")], false),
            2
        );
    }

    #[test]
    fn keygen_writes_a_key_that_verify_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cp.pem");
        assert_eq!(keygen_cmd(&key), 0);
        assert!(SigningKey::from_file(&key).is_ok());
        assert!(VerifyKey::from_file(&key).is_ok());
        assert_eq!(keygen_cmd(&key), 2, "never overwrites a key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn report_and_segments_run_on_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        spool(dir.path());
        assert_eq!(report_cmd(&[dir.path().to_path_buf()], Some("24h"), true), 0);
        assert_eq!(report_cmd(&[dir.path().to_path_buf()], Some("soon"), false), 2);
        let html = dir.path().join("r.html");
        assert_eq!(html_cmd(&[dir.path().to_path_buf()], Some("24h"), &html), 0);
        assert!(std::fs::read_to_string(&html)
            .unwrap()
            .contains("Hash chain verified"));
        assert_eq!(html_cmd(&[dir.path().to_path_buf()], Some("soon"), &html), 2);
        assert_eq!(segments_cmd(dir.path(), false), 0);
    }

    #[test]
    fn export_and_segments_read_compressed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let seg = spool(dir.path());
        let plain = std::fs::read(&seg).unwrap();
        let zst = dir.path().join(segment::compressed_segment_file_name(1));
        let compressed = segment::compress_segment_file(&seg, &zst).unwrap();
        assert!(compressed > 0 && compressed != plain.len() as u64);
        // Both forms (an interrupted compression): read once.
        assert_eq!(read_records(&[dir.path().to_path_buf()]).unwrap().len(), 2);
        std::fs::remove_file(&seg).unwrap();
        let records = read_records(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1]["seq"], 2);
        assert_eq!(read_records(std::slice::from_ref(&zst)).unwrap().len(), 2);
        assert_eq!(
            export_cmd(&[dir.path().to_path_buf()], ExportFormat::Jsonl, None),
            0
        );
        assert_eq!(verify_cmd(&[dir.path().to_path_buf()], &[], false), 0);
        let infos = segment::segment_infos(dir.path()).unwrap();
        assert!(infos[0].compressed);
        assert_eq!(infos[0].uncompressed_bytes, Some(plain.len() as u64));
        let text = segments_text(&infos);
        assert!(text.contains(".jsonl.zst") && text.contains("zstd"), "{text}");
        assert_eq!(segments_cmd(dir.path(), true), 0);
    }

    #[test]
    fn command_line_parses() {
        let cli = crate::Cli::try_parse_from([
            "phigate",
            "audit",
            "verify",
            "spool/",
            "--checkpoint-key",
            "k.pem",
            "--checkpoint-key",
            "old.pem",
            "--json",
        ])
        .unwrap();
        match cli.command {
            crate::Command::Audit {
                command:
                    AuditCommand::Verify {
                        paths,
                        checkpoint_keys,
                        json,
                    },
            } => {
                assert_eq!(paths, [PathBuf::from("spool/")]);
                assert_eq!(checkpoint_keys.len(), 2);
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::Cli::try_parse_from(["phigate", "audit", "verify"]).is_err());
        assert!(crate::Cli::try_parse_from(["phigate", "audit", "report", "d", "--since", "7d"]).is_ok());
    }
}
