//! `phigate policy …`: check, test, explain, schema (suggest and replay in their own modules).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use phigate_gateway::policy_loader;
use phigate_policy::testing::{self, TestToken};
use phigate_policy::{Diagnostic, PolicySet, PolicySource};

use crate::PolicyCommand;

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Check { paths } => check(&paths),
        PolicyCommand::Test { paths } => test(&paths),
        PolicyCommand::Explain {
            policies,
            method,
            path,
            scopes,
            roles,
            claims,
            headers,
            body,
            body_file,
            invalid,
            json,
        } => {
            let body = match (body, body_file) {
                (Some(b), _) => Some(b.into_bytes()),
                (None, Some(f)) => match std::fs::read(&f) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        eprintln!("--body-file {}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                },
                (None, None) => None,
            };
            explain(
                &policies,
                &method.to_ascii_uppercase(),
                &path,
                scopes,
                roles,
                &claims,
                &headers,
                body.as_deref(),
                invalid,
                json,
            )
        }
        PolicyCommand::Schema { write } => schema(write.as_deref()),
        PolicyCommand::Suggest {
            paths,
            since,
            roles,
            allow_broken,
            json,
        } => crate::suggest_cmd::run(&paths, &since, roles, allow_broken, json),
        PolicyCommand::Replay {
            policies,
            paths,
            since,
            allow_broken,
            json,
        } => crate::replay_cmd::run(&policies, &paths, since.as_deref(), allow_broken, json),
    }
}

/// A policy directory, or a single policy file.
fn load(path: &Path) -> Result<PolicySet, Vec<Diagnostic>> {
    if path.is_file() {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::new(&name, None, format!("cannot read: {e}"))])?;
        phigate_policy::compile(&[PolicySource::new(name, text)])
    } else {
        policy_loader::load_dir(path)
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for p in paths {
        match load(p) {
            Ok(set) => {
                for w in set.warnings() {
                    eprintln!("{}", warning(w));
                }
                println!(
                    "{}: ok, {} route(s), {} warning(s), version {}",
                    p.display(),
                    set.routes().len(),
                    set.warnings().len(),
                    set.version()
                );
            }
            Err(d) => {
                for e in &d {
                    eprintln!("{e}");
                }
                eprintln!("{}: {} error(s)", p.display(), d.len());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn warning(d: &Diagnostic) -> String {
    match &d.location {
        Some(l) => format!("{}:{}:{}: warning: {}", d.file, l.line, l.column, d.message),
        None => format!("{}: warning: {}", d.file, d.message),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Test files for a path: a `*.test.yaml` file itself, or every one in a directory.
fn test_files(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    if path.is_file() {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        return Ok((dir, vec![path.to_path_buf()]));
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
        })
        .collect();
    files.sort();
    Ok((path.to_path_buf(), files))
}

fn test(paths: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, false);
    for p in paths {
        let (dir, files) = match test_files(p) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{e}");
                broken = true;
                continue;
            }
        };
        if files.is_empty() {
            eprintln!("{}: no *.test.yaml files", p.display());
            broken = true;
            continue;
        }
        let policy = match load(&dir) {
            Ok(set) => set,
            Err(d) => {
                for e in &d {
                    eprintln!("{e}");
                }
                broken = true;
                continue;
            }
        };
        for f in files {
            let name = f.display().to_string();
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{name}: cannot read: {e}");
                    broken = true;
                    continue;
                }
            };
            match testing::run_tests(&policy, &name, &text, now()) {
                Err(d) => {
                    for e in &d {
                        eprintln!("{e}");
                    }
                    broken = true;
                }
                Ok(results) => {
                    for r in results {
                        if r.passed {
                            passed += 1;
                        } else {
                            failed += 1;
                            eprintln!("{}: FAIL {}: {}", r.origin, r.name, r.message);
                        }
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not name=value")),
    }
}

#[allow(clippy::too_many_arguments)]
fn explain(
    policies: &Path,
    method: &str,
    target: &str,
    scopes: Vec<String>,
    roles: Vec<String>,
    claims: &[String],
    headers: &[String],
    body: Option<&[u8]>,
    invalid: Option<String>,
    json: bool,
) -> ExitCode {
    let policy = match load(policies) {
        Ok(p) => p,
        Err(d) => {
            for e in &d {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let mut claim_map = BTreeMap::new();
    for c in claims {
        match key_value(c) {
            Ok((k, v)) => {
                // Arrays, objects and booleans as JSON (`amr=["mfa"]`); everything
                // else as a string, so `patient=123` stays the string "123".
                let structured = v.starts_with(['[', '{']) || v == "true" || v == "false";
                let value = if structured {
                    serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v))
                } else {
                    serde_json::Value::String(v)
                };
                claim_map.insert(k, value);
            }
            Err(e) => {
                eprintln!("--claim {e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut header_list = phigate_policy::HeaderList::default();
    for h in headers {
        match key_value(h) {
            Ok((k, v)) => {
                header_list.0.push((k, v.into_bytes()));
            }
            Err(e) => {
                eprintln!("--header {e}");
                return ExitCode::from(2);
            }
        }
    }
    let has_token = !scopes.is_empty() || !roles.is_empty() || !claim_map.is_empty() || invalid.is_some();
    let token = has_token.then_some(TestToken {
        scopes,
        roles,
        claims: claim_map,
        auth_age: None,
        invalid,
    });
    let now = now();
    let authn = match testing::build_authn(token.as_ref(), now) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let e = testing::explain(&policy, method, target, &header_list, body, &authn, now);
    if json {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    } else {
        println!("request:    {} {}", e.method, e.path);
        match (&e.route, &e.origin) {
            (Some(r), Some(o)) => println!("route:      {r}  ({o})"),
            _ => println!("route:      none (default deny)"),
        }
        for (i, r) in e.requires.iter().enumerate() {
            println!("{}{r}", if i == 0 { "requires:   " } else { "            " });
        }
        if has_token {
            println!("token:      scopes [{}]", e.token_scopes.join(" "));
            println!(
                "effective:  scopes [{}] (after roles)",
                e.effective_scopes.join(" ")
            );
        } else {
            println!("token:      none");
        }
        println!("decision:   {} ({}), HTTP {}", e.decision, e.reason, e.status);
        if let Some(s) = &e.shadow_decision {
            println!("shadow:     would {s} (report_only)");
        }
        if e.break_glass {
            println!("break-glass: yes");
        }
        if let Some(p) = &e.patient {
            println!("patient:    {p}");
        }
        if let Some(d) = &e.detail {
            println!("detail:     {d}");
        }
        if let Some(w) = &e.www_authenticate {
            println!("WWW-Authenticate: {w}");
        }
    }
    ExitCode::SUCCESS
}

fn schema(write: Option<&Path>) -> ExitCode {
    match write {
        None => {
            print!("{}", testing::policy_schema());
            ExitCode::SUCCESS
        }
        Some(dir) => {
            for (name, text) in [
                ("policy.schema.json", testing::policy_schema()),
                ("policy-test.schema.json", testing::test_schema()),
            ] {
                let path = dir.join(name);
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
    }
}
