//! `phigate policy suggest`: least-privilege grants and role proposals from
//! the audit spool. The logic lives in `phigate_audit::suggest`; this is
//! argument handling and output.
//!
//! Exit codes: 0 suggestions printed; 1 the hash chain is broken (refused
//! without `--allow-broken`); 2 the command could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use phigate_audit::{report, suggest, verify};

pub fn run(paths: &[PathBuf], since: &str, roles: bool, allow_broken: bool, json: bool) -> ExitCode {
    ExitCode::from(suggest_cmd(paths, since, roles, allow_broken, json))
}

fn cannot(e: impl std::fmt::Display) -> u8 {
    eprintln!("phigate policy suggest: {e}");
    2
}

fn suggest_cmd(paths: &[PathBuf], since: &str, roles: bool, allow_broken: bool, json: bool) -> u8 {
    let since = match report::parse_since(since) {
        Ok(t) => t,
        Err(e) => return cannot(format!("--since: {e}")),
    };
    // Least privilege from tampered evidence would be worse than none.
    let chain = match verify::verify(paths, &[]) {
        Ok(r) => r,
        Err(e) => return cannot(e),
    };
    let problem = chain.problem.as_ref().map(|p| {
        format!(
            "{}:{} (seq {}): {}",
            p.file,
            p.line,
            p.seq.map_or("-".to_string(), |s| s.to_string()),
            p.message
        )
    });
    if !chain.ok && !allow_broken {
        eprintln!(
            "phigate policy suggest: the audit hash chain is BROKEN at {}; refusing to suggest from records that may have been altered (run `phigate audit verify`; `--allow-broken` to go on anyway)",
            problem.as_deref().unwrap_or("?")
        );
        return 1;
    }
    let mut s = match suggest::suggest(paths, Some(since)) {
        Ok(s) => s,
        Err(e) => return cannot(e),
    };
    if !roles {
        s.roles.clear();
    }
    if json {
        let out = serde_json::json!({
            "chain_verified": chain.ok,
            "chain_problem": problem,
            "caveat": s.window_caveat(),
            "window_from": s.window_from,
            "window_to": s.window_to,
            "records": s.records,
            "clients": s.clients,
            "roles": if roles { Some(&s.roles) } else { None },
            "roles_yaml": roles.then(|| s.roles_yaml()),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return 0;
    }
    if !chain.ok {
        println!(
            "WARNING: hash chain BROKEN at {} (--allow-broken): these suggestions rest on records that may have been altered",
            problem.as_deref().unwrap_or("?")
        );
    }
    print!("{}", s.to_text(roles));
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use phigate_audit::chain;

    /// A spool of access records sealed with the public chain functions.
    fn spool(dir: &std::path::Path, records: &[serde_json::Value]) -> PathBuf {
        let mut prev = chain::GENESIS_HASH.to_string();
        let mut text = String::new();
        for (i, r) in records.iter().enumerate() {
            let mut v = r.clone();
            v["v"] = 1.into();
            v["kind"] = "access".into();
            v["seq"] = (i as u64 + 1).into();
            v["event_id"] = format!("e{}", i + 1).into();
            v["prev_hash"] = prev.clone().into();
            let (line, hash) = chain::seal(&prev, &v);
            text.push_str(&line);
            prev = hash;
        }
        let path = dir.join(phigate_audit::segment::segment_file_name(1));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn access(client: &str, sub: &str, used: &str) -> serde_json::Value {
        serde_json::json!({
            "ts": phigate_audit::now_rfc3339(), "request_id": "r", "decision": "allow",
            "reason": "allowed", "status": 200, "method": "GET", "path": "/fhir/Patient/1",
            "sub": sub, "client_id": client, "scopes_granted": [used, "user/Condition.rs"],
            "scopes_required": ["user/Patient.r"], "scope_used": [used], "upstream_status": 200,
            "duration_ms": 1.0, "policy_version": "v", "outcome": "success"
        })
    }

    #[test]
    fn suggests_from_a_verified_spool_and_refuses_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let seg = spool(
            dir.path(),
            &[
                access("ehr", "alice", "user/Patient.rs"),
                access("ehr", "bob", "user/Patient.rs"),
            ],
        );
        let paths = [dir.path().to_path_buf()];
        assert_eq!(suggest_cmd(&paths, "30d", true, false, false), 0);
        assert_eq!(suggest_cmd(&paths, "30d", true, false, true), 0);
        assert_eq!(suggest_cmd(&paths, "someday", false, false, false), 2);
        let s = suggest::suggest(&paths, None).unwrap();
        assert_eq!(s.clients[0].suggested, ["user/Patient.rs"]);
        assert_eq!(s.clients[0].unused, ["user/Condition.rs"]);
        assert_eq!(s.roles[0].subjects, ["alice", "bob"]);
        let text = std::fs::read_to_string(&seg).unwrap();
        std::fs::write(&seg, text.replace("\"bob\"", "\"eve\"")).unwrap();
        assert_eq!(
            suggest_cmd(&paths, "30d", false, false, false),
            1,
            "broken chain refused"
        );
        assert_eq!(
            suggest_cmd(&paths, "30d", false, true, false),
            0,
            "--allow-broken"
        );
        assert_eq!(
            suggest_cmd(&[dir.path().join("missing")], "30d", false, false, false),
            2
        );
    }

    #[test]
    fn command_line_parses() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "phigate", "policy", "suggest", "spool/", "--since", "7d", "--roles", "--json",
        ])
        .unwrap();
        match cli.command {
            crate::Command::Policy {
                command:
                    crate::PolicyCommand::Suggest {
                        paths,
                        since,
                        roles,
                        allow_broken,
                        json,
                    },
            } => {
                assert_eq!(paths, [PathBuf::from("spool/")]);
                assert_eq!(since, "7d");
                assert!(roles && json && !allow_broken);
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::Cli::try_parse_from(["phigate", "policy", "suggest"]).is_err());
    }
}
