//! The `phigate` command line. Kept as a library so the end-to-end test
//! crate can build the very same binary.
#![forbid(unsafe_code)]

#[cfg(feature = "dev")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use phigate_gateway::config::{self, LogFormat};
#[cfg(feature = "dev")]
use phigate_gateway::DevOptions;

pub mod alloc;
mod audit_cmd;
mod policy_cmd;
mod replay_cmd;
mod review_cmd;
mod sessions_cmd;
mod suggest_cmd;

pub use audit_cmd::AuditCommand;

/// phigate: a HIPAA-minded authorization gateway for FHIR/EHR APIs.
#[derive(Debug, Parser)]
#[command(name = "phigate", version, about)]
pub struct Cli {
    /// Log format (default: json for `run`, pretty for `dev`). Filter with RUST_LOG.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum DurabilityArg {
    Interval,
    PerRequest,
    /// No fsync at all: benchmarks only.
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IntentArg {
    Writes,
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway from a configuration file.
    Run {
        /// Path to gateway.yaml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run everything on one machine for development: a dev token issuer, a
    /// demo FHIR upstream with synthetic data, and the gateway. NEVER for real PHI.
    /// (Absent from builds without the `dev` feature, e.g. the container image.)
    #[cfg(feature = "dev")]
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Plain JSONL copy of every audit record (tail it).
        #[arg(long, default_value = "./phigate-audit.jsonl")]
        audit_file: PathBuf,
        /// The durable, hash-chained audit spool (`phigate audit verify DIR`).
        #[arg(long, default_value = "./phigate-audit.d")]
        audit_dir: PathBuf,
        /// Audit durability: `interval` (fsync every 10 ms), `per_request`, or `none` (benchmarks only).
        #[arg(long, value_enum, default_value = "interval")]
        audit_durability: DurabilityArg,
        /// Which allowed requests get an `intent` record before forwarding:
        /// `writes` (every method but GET/HEAD) or `all`.
        #[arg(long, value_enum, default_value = "writes")]
        audit_intent: IntentArg,
        /// Policy directory (default: the bundled dev policy, embedded).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// PEM PKCS#8 P-256 key for the dev issuer; generated (and written here) if missing.
        #[arg(long)]
        dev_key: Option<PathBuf>,
        /// Accept HTTP/2 with prior knowledge (h2c) on `--listen`.
        #[arg(long)]
        h2c: bool,
        /// Also listen with TLS here (HTTP/2 and HTTP/1.1 by ALPN); needs
        /// `--tls-cert` and `--tls-key`.
        #[arg(long, requires_all = ["tls_cert", "tls_key"])]
        tls_listen: Option<SocketAddr>,
        /// PEM certificate chain for `--tls-listen`.
        #[arg(long, requires = "tls_listen")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for `--tls-listen`.
        #[arg(long, requires = "tls_listen")]
        tls_key: Option<PathBuf>,
        /// Automatic log-off: end sessions idle longer than this (e.g.
        /// `30s`), with the memory session store. Sessions (logout,
        /// revocation) are on in dev mode either way.
        #[arg(long, value_parser = humantime::parse_duration)]
        idle_timeout: Option<std::time::Duration>,
    },
    /// Session tools: end a workforce member's access now.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Audit spool tools: verify the hash chain, report scope use.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum PolicyCommand {
    /// Compile policy directories (or files) and report every error as
    /// file:line:column, plus warnings (broad scopes, unknown SMART resource
    /// types, unused roles, overlapping or unreachable routes). Exit 1 on errors.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the `*.test.yaml` files next to the policies; prints `N passed, M failed`.
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Explain the decision for one request: the rule that matched, what it
    /// required, what the token had, the decision and the reason.
    Explain {
        /// Policy directory (or file).
        #[arg(long)]
        policies: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request target, e.g. `/fhir/Observation?patient=123`.
        #[arg(long)]
        path: String,
        /// A granted scope (repeatable). Any of --scope/--role/--claim means a valid token.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A claim `name=value` (repeatable); `[...]`, `{...}`, true/false are JSON, anything else a string.
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// A request header `name=value` (repeatable; a name given twice is a
        /// header sent twice, as the gateway would see it).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The request body (a batch Bundle, a `_search` form), read when
        /// deciding needs it, as the gateway does.
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// Read the request body from a file.
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Explain as if the token had been rejected with this reason (e.g. token_expired).
        #[arg(long)]
        invalid: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What a policy change would do to real traffic: decide every recorded
    /// request of an audit spool again with the policy in `--policies` (the
    /// gateway's own decision core) and list the decisions that would
    /// change, allow→deny and deny→allow, by route, client and new reason,
    /// with example `event_id`s; and which records cannot be replayed
    /// exactly, and why. Verifies the chain first. Exit 1 when an allowed
    /// request would be denied (for CI), 0 otherwise, 2 on errors.
    Replay {
        /// The new policy directory (or file).
        #[arg(long)]
        policies: PathBuf,
        /// Spool directories or segment files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Only records at or after this time: RFC 3339, or a duration before now (`7d`).
        #[arg(long)]
        since: Option<String>,
        /// Replay even when the hash chain does not verify (the output says so).
        #[arg(long)]
        allow_broken: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the policy file JSON Schema, or write both schemas into a directory.
    Schema {
        /// Write `policy.schema.json` and `policy-test.schema.json` here.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Least privilege from observed use: per client, the minimal scope set
    /// that would have allowed everything it did in the audit window, the
    /// granted scopes it never used, and a ready-to-paste grant; with
    /// `--roles`, role definitions grouping subjects with the same used
    /// scopes. A short window under-counts rare legitimate use.
    Suggest {
        /// Spool directories or segment files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Only records at or after this time: RFC 3339, or a duration before now (`30d`).
        #[arg(long, default_value = "30d")]
        since: String,
        /// Also propose role definitions (subjects grouped by used scopes).
        #[arg(long)]
        roles: bool,
        /// Suggest even when the hash chain does not verify (the output says so).
        #[arg(long)]
        allow_broken: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Revoke a session (`--sid`) or every session of a subject issued
    /// before now (`--sub`) on every replica, through a running gateway's
    /// admin listener (`POST /sessions/revoke`). Audited as a `logout`
    /// record (source `admin`). Later requests with those tokens get 401
    /// `session_revoked`.
    Revoke {
        #[arg(long, conflicts_with = "sub", required_unless_present = "sub")]
        sid: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        /// The issuer (needed when the gateway trusts several).
        #[arg(long)]
        issuer: Option<String>,
        /// Who is asking, for the audit record (default: $USER).
        #[arg(long)]
        actor: Option<String>,
        /// The gateway's admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a gateway configuration file (and the policies it names).
    Check {
        path: PathBuf,
        /// Also fetch every issuer's discovery document and keys, and connect
        /// to every upstream address (TLS handshake and one `HEAD /`), and
        /// report what fails.
        #[arg(long)]
        online: bool,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("phigate: logging setup failed: {e}");
    }
}

fn print_diagnostics(d: &[phigate_policy::Diagnostic]) {
    for d in d {
        eprintln!("{d}");
    }
}

/// Parse arguments, run, and turn the outcome into an exit code.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    let forced = cli.log_format.map(|f| match f {
        LogFormatArg::Json => LogFormat::Json,
        LogFormatArg::Pretty => LogFormat::Pretty,
    });
    match cli.command {
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(d) => {
                    print_diagnostics(&d);
                    eprintln!("phigate: {} configuration error(s); not starting", d.len());
                    return ExitCode::FAILURE;
                }
            };
            init_tracing(forced.unwrap_or(cfg.log_format));
            let policy = match config::load_policies(&cfg) {
                Ok(p) => p,
                Err(d) => {
                    print_diagnostics(&d);
                    eprintln!("phigate: {} policy error(s); not starting", d.len());
                    return ExitCode::FAILURE;
                }
            };
            finish(phigate_gateway::serve(cfg, policy, None))
        }
        #[cfg(feature = "dev")]
        Command::Dev {
            listen,
            admin_listen,
            audit_file,
            audit_dir,
            audit_durability,
            audit_intent,
            policies,
            dev_key,
            h2c,
            tls_listen,
            tls_cert,
            tls_key,
            idle_timeout,
        } => {
            init_tracing(forced.unwrap_or(LogFormat::Pretty));
            finish(phigate_gateway::dev(DevOptions {
                listen,
                admin_listen,
                audit_file,
                audit_dir,
                audit_durability: match audit_durability {
                    DurabilityArg::Interval => phigate_audit::Durability::default(),
                    DurabilityArg::PerRequest => phigate_audit::Durability::PerRequest,
                    DurabilityArg::None => phigate_audit::Durability::None,
                },
                audit_intent: match audit_intent {
                    IntentArg::Writes => phigate_gateway::config::IntentMode::Writes,
                    IntentArg::All => phigate_gateway::config::IntentMode::All,
                },
                policies,
                dev_key,
                h2c,
                tls: match (tls_listen, tls_cert, tls_key) {
                    (Some(a), Some(c), Some(k)) => Some((a, c, k)),
                    _ => None,
                },
                idle_timeout,
            }))
        }
        Command::Sessions {
            command:
                SessionsCommand::Revoke {
                    sid,
                    sub,
                    issuer,
                    actor,
                    admin,
                },
        } => crate::sessions_cmd::revoke(&admin, sid, sub, issuer, actor),
        Command::Policy { command } => crate::policy_cmd::run(command),
        Command::Audit { command } => crate::audit_cmd::run(command),
        Command::Config {
            command: ConfigCommand::Check { path, online },
        } => {
            let cfg = match config::load(&path) {
                Ok(c) => c,
                Err(d) => {
                    print_diagnostics(&d);
                    eprintln!("{}: {} error(s)", path.display(), d.len());
                    return ExitCode::FAILURE;
                }
            };
            let offline = match config::load_policies(&cfg) {
                Ok(set) => {
                    println!("{}: ok (policy version {})", path.display(), set.version());
                    true
                }
                Err(d) => {
                    print_diagnostics(&d);
                    false
                }
            };
            if !online {
                return if offline {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            match phigate_gateway::online::check(&cfg) {
                Ok(checks) => {
                    let failed = checks.iter().filter(|c| c.error.is_some()).count();
                    for c in &checks {
                        match &c.error {
                            None => println!("online: {}: ok ({})", c.what, c.detail),
                            Some(e) => println!("online: {}: FAILED: {e}", c.what),
                        }
                    }
                    if failed > 0 {
                        eprintln!("{}: {failed} online check(s) failed", path.display());
                    }
                    if offline && failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("online checks: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn finish(r: Result<(), phigate_gateway::GatewayError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "phigate stopped");
            eprintln!("phigate: {e}");
            ExitCode::FAILURE
        }
    }
}
