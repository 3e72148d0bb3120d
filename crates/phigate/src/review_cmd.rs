//! `phigate audit review`: argument handling and output; the review itself
//! is `phigate_audit::review`.
//!
//! Exit codes: 0 reviewed (whatever was found); 1 the chain is broken and
//! `--allow-broken` was not given; 2 the review could not run (unreadable
//! path, bad `--since`, bad `--config`, unwritable `--html`).

use std::path::PathBuf;

use phigate_audit::review::{review, ReviewConfig, ReviewError, ReviewOptions};
use phigate_audit::VerifyKey;

/// The arguments of `phigate audit review`.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// Spool directories or segment files (plain or zstd).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Only records at or after this time: RFC 3339, or a duration before
    /// now (`24h`, `7d`). Earlier records only tell the dormancy rule when a
    /// principal was last seen.
    #[arg(long)]
    pub since: Option<String>,
    /// Rule thresholds (YAML); the defaults are in the README.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Write a self-contained HTML report to this file (a summary is printed).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Review a chain that does not verify; the output says where it broke.
    #[arg(long)]
    pub allow_broken: bool,
    /// Ed25519 public key that checks checkpoint signatures; repeat for rotated keys.
    #[arg(long = "checkpoint-key")]
    pub checkpoint_keys: Vec<PathBuf>,
}

/// Run `phigate audit review`; returns the exit code.
pub fn run(args: &ReviewArgs) -> u8 {
    let since = match args.since.as_deref().map(phigate_audit::report::parse_since) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return cannot(format!("--since: {e}")),
        None => None,
    };
    let config = match &args.config {
        None => ReviewConfig::default(),
        Some(path) => match ReviewConfig::load(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                return cannot(format!("{} error(s) in {}", errors.len(), path.display()));
            }
        },
    };
    let mut checkpoint_keys = Vec::new();
    for f in &args.checkpoint_keys {
        match VerifyKey::from_file(f) {
            Ok(k) => checkpoint_keys.push(k),
            Err(e) => return cannot(e),
        }
    }
    let options = ReviewOptions {
        since,
        allow_broken: args.allow_broken,
        checkpoint_keys,
        least_privilege: args.html.is_some(),
    };
    let report = match review(&args.paths, &config, &options) {
        Ok(r) => r,
        Err(e @ ReviewError::ChainBroken(_)) => {
            eprintln!("phigate audit review: {e}");
            return 1;
        }
        Err(e) => return cannot(e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return 0;
    }
    if let Some(out) = &args.html {
        let html = phigate_audit::render_html(&report.to_html_report("phigate audit review"));
        if let Err(e) = std::fs::write(out, html) {
            return cannot(format!("{}: {e}", out.display()));
        }
        eprintln!("wrote {}", out.display());
    }
    print!("{}", report.to_text());
    0
}

fn cannot(e: impl std::fmt::Display) -> u8 {
    eprintln!("phigate audit review: {e}");
    2
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use phigate_audit::chain;
    use std::path::Path;

    /// A spool of `n` denials by `sub` one second apart, sealed by hand
    /// with the public chain functions.
    fn spool(dir: &Path, sub: &str, n: u64) {
        let mut prev = chain::GENESIS_HASH.to_string();
        let mut text = String::new();
        for seq in 1..=n {
            let v = serde_json::json!({
                "v": 1, "kind": "access", "seq": seq, "event_id": format!("e{seq}"),
                "prev_hash": prev, "ts": format!("2026-11-30T08:00:{:02}.000Z", seq % 60),
                "request_id": format!("r{seq}"), "decision": "deny", "reason": "insufficient_scope",
                "status": 403, "method": "GET", "path": format!("/fhir/Patient/p{seq}"),
                "sub": sub, "client_id": "app", "duration_ms": 1.0, "policy_version": "x",
                "remote_addr": "10.0.0.1:5000", "outcome": "denied"
            });
            let (line, hash) = chain::seal(&prev, &v);
            text.push_str(&line);
            prev = hash;
        }
        std::fs::write(dir.join(phigate_audit::segment::segment_file_name(1)), text).unwrap();
    }

    fn args(line: &[&str]) -> ReviewArgs {
        let mut argv = vec!["phigate", "audit", "review"];
        argv.extend_from_slice(line);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Audit {
                command: crate::AuditCommand::Review(a),
            } => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reviews_text_json_and_html_and_refuses_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        spool(dir.path(), "mallory", 30);
        let d = dir.path().to_str().unwrap();
        assert_eq!(run(&args(&[d])), 0);
        assert_eq!(run(&args(&[d, "--json", "--since", "2026-11-30T00:00:00Z"])), 0);
        let html = dir.path().join("review.html");
        assert_eq!(run(&args(&[d, "--html", html.to_str().unwrap()])), 0);
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.contains("mallory") && page.contains("probing"), "{page}");
        assert_eq!(run(&args(&[d, "--since", "soon"])), 2);
        let missing = format!("{d}/missing");
        assert_eq!(run(&args(&[missing.as_str()])), 2);

        let seg = dir.path().join(phigate_audit::segment::segment_file_name(1));
        let text = std::fs::read_to_string(&seg).unwrap();
        std::fs::write(&seg, text.replacen("mallory", "mallorx", 1)).unwrap();
        assert_eq!(run(&args(&[d])), 1, "a broken chain is refused");
        assert_eq!(run(&args(&[d, "--allow-broken"])), 0);
    }

    #[test]
    fn a_bad_config_is_reported_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        spool(dir.path(), "alice", 2);
        let config = dir.path().join("review.yaml");
        std::fs::write(&config, "probing:\n  min_denials: 1\n  windw: 5m\n").unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(run(&args(&[d, "--config", config.to_str().unwrap()])), 2);
        std::fs::write(&config, "probing:\n  min_denials: 40\n").unwrap();
        assert_eq!(run(&args(&[d, "--config", config.to_str().unwrap()])), 0);
        assert!(
            crate::Cli::try_parse_from(["phigate", "audit", "review", d, "--json", "--html", "x.html"])
                .is_err()
        );
        assert!(crate::Cli::try_parse_from(["phigate", "audit", "review"]).is_err());
    }
}
