//! Policy *file* types: exactly what ops teams write in YAML.
//!
//! These types only describe the file format (and generate its JSON Schema,
//! `docs/policy.schema.json`). They are compiled once into the runtime
//! [`crate::PolicySet`] by [`crate::compile`], which validates them and
//! reports every problem with its `file:line:column`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// One policy file. Several files in a directory are merged.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version; only `1` exists.
    pub version: u32,
    /// `enforce` (default) or `report_only` (shadow mode) for every route in
    /// this file; a route's own `mode` wins.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Policy-wide settings (at most one file may set each key).
    #[serde(default)]
    pub settings: Option<Settings>,
    /// Role name → scopes (RBAC). Roles come from the issuer's role claim.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Emergency access (at most one file may declare it).
    #[serde(default)]
    pub break_glass: Option<BreakGlassSpec>,
    /// Routes this file contributes.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// Enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Denials block (the default).
    Enforce,
    /// Shadow mode: a would-be denial is let through and audited with
    /// `shadow_decision: deny` and its reason.
    ReportOnly,
}

/// How roles combine with the token's own scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolesMode {
    /// Effective scopes = token scopes ∪ scopes of the token's roles.
    #[default]
    Grant,
    /// Effective scopes = token scopes ∩ scopes of the token's roles
    /// (roles cap what a client may use; no role → no scopes).
    Cap,
}

/// Policy-wide settings.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `grant` (default) or `cap`.
    #[serde(default)]
    pub roles_mode: Option<RolesMode>,
}

/// Break-glass (emergency access) configuration.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassSpec {
    /// The emergency scope the token must carry (e.g. `emergency.phi.read`).
    pub scope: String,
    /// Request header carrying the justification (e.g. `X-Break-Glass-Reason`).
    pub header: String,
    /// Longest accepted justification (characters); default 500.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Fewest visible characters after Unicode NFC normalisation
    /// (whitespace, zero-width and format characters do not count); default 8.
    #[serde(default)]
    pub min_length: Option<usize>,
    /// When set, the justification must start with one of these codes
    /// (followed by end of text, `:` or a space), e.g. `ETREAT: unconscious patient`.
    #[serde(default)]
    pub reason_codes: Option<Vec<String>>,
    /// Only reads (GET/HEAD, FHIR search) may break the glass; default true.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// One route: method(s) + path template → what is required.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Optional stable name; used as the `route` label in metrics and audit.
    /// Defaults to the path template.
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP methods (upper case), or `["*"]` for any.
    pub methods: Vec<String>,
    /// Path template: literal segments, `{param}` segments, and a final `**`
    /// that matches one or more remaining segments.
    pub path: String,
    /// No token needed (e.g. `/fhir/metadata`). Excludes `scopes` and `fhir`.
    #[serde(default)]
    pub public: bool,
    /// Scopes the token must carry.
    #[serde(default)]
    pub scopes: Option<ScopeSpec>,
    /// FHIR-aware: the SMART permission is derived from the FHIR interaction
    /// of the request (read, search, create, ...) under this base.
    #[serde(default)]
    pub fhir: Option<FhirSpec>,
    /// Extra conditions on claims and time.
    #[serde(default)]
    pub when: Option<WhenSpec>,
    /// The token's `acr` must be one of these.
    #[serde(default)]
    pub require_acr: Option<Vec<String>>,
    /// The token's `amr` must contain every one of these (e.g. `[mfa]`).
    #[serde(default)]
    pub require_amr: Option<Vec<String>>,
    /// Maximum time since `auth_time` (e.g. `15m`): automatic log-off.
    #[serde(default)]
    pub max_auth_age: Option<String>,
    /// `enforce` or `report_only`; defaults to the file's mode.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Protocol upgrades this route may forward: only `websocket` (e.g. FHIR
    /// subscription channels). Every other route refuses `Upgrade` requests.
    #[serde(default)]
    pub upgrade: Option<UpgradeSpec>,
    /// Automatic log-off for this route: a shorter session idle timeout than
    /// the gateway's `sessions.idle_timeout` (e.g. `5m` for writes). A
    /// request after a longer idle period ends the session
    /// (`session_idle_timeout`). Needs `sessions` in the gateway config.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Only DPoP-bound tokens (RFC 9449) with a valid proof may use this route.
    #[serde(default)]
    pub require_dpop: bool,
}

/// A protocol upgrade a route opts into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeSpec {
    /// RFC 6455 WebSocket (`GET` with `Upgrade: websocket`); the tunnel is
    /// audited when it opens and when it closes.
    Websocket,
}

/// Which scopes a route requires: exactly one of `all_of` or `any_of`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    /// Every listed scope must be granted.
    #[serde(default)]
    pub all_of: Option<Vec<String>>,
    /// At least one listed scope must be granted.
    #[serde(default)]
    pub any_of: Option<Vec<String>>,
}

/// FHIR-aware route settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FhirSpec {
    /// The FHIR base path (e.g. `/fhir`); the route's path must lie under it.
    pub base: String,
}

/// Conditions beyond scopes. All listed conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// Claim conditions.
    #[serde(default)]
    pub claims: Vec<ClaimCondition>,
    /// Time window.
    #[serde(default)]
    pub time: Option<TimeWindowSpec>,
}

/// A condition on one claim: exactly one of `equals` / `contains`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimCondition {
    /// Claim name; dots walk into objects (`realm_access.roles`).
    pub claim: String,
    /// The claim (string, number or boolean) equals the operand.
    #[serde(default)]
    pub equals: Option<Operand>,
    /// The claim (array, or space-separated string) contains the operand.
    #[serde(default)]
    pub contains: Option<Operand>,
}

/// What a claim is compared with: exactly one of `value`, `param`, `query`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operand {
    /// A literal.
    #[serde(default)]
    pub value: Option<String>,
    /// A path parameter of the route template (`{id}` → `id`).
    #[serde(default)]
    pub param: Option<String>,
    /// A query parameter (must appear exactly once).
    #[serde(default)]
    pub query: Option<String>,
}

/// A time window in an explicit IANA time zone.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowSpec {
    /// IANA zone name, e.g. `America/New_York` (required: no implicit UTC).
    pub timezone: String,
    /// Allowed weekdays: `mon` … `sun`.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Allowed local time of day, `HH:MM-HH:MM` (end exclusive; may wrap midnight).
    #[serde(default)]
    pub hours: Option<String>,
    /// First allowed local date, `YYYY-MM-DD` (inclusive).
    #[serde(default)]
    pub from: Option<String>,
    /// Last allowed local date, `YYYY-MM-DD` (inclusive).
    #[serde(default)]
    pub until: Option<String>,
}
