//! Policy *file* types: exactly what ops teams write in YAML.
//!
//! These types only describe the file format. They are compiled once into the
//! runtime [`crate::PolicySet`] by [`crate::compile`], which validates them and
//! reports every problem with its `file:line:column`.

use serde::Deserialize;

/// One policy file. Several files in a directory are merged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version; only `1` exists.
    pub version: u32,
    /// Routes this file contributes.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One route: method(s) + path template → what is required.
#[derive(Debug, Clone, Deserialize)]
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
    /// No token needed (e.g. `/fhir/metadata`). Excludes `scopes`.
    #[serde(default)]
    pub public: bool,
    /// Scopes the token must carry.
    #[serde(default)]
    pub scopes: Option<ScopeSpec>,
}

/// Which scopes a route requires: exactly one of `all_of` or `any_of`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    /// Every listed scope must be granted.
    #[serde(default)]
    pub all_of: Option<Vec<String>>,
    /// At least one listed scope must be granted.
    #[serde(default)]
    pub any_of: Option<Vec<String>>,
}
