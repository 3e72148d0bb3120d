//! Compilation of policy files into the runtime [`PolicySet`].

use std::collections::HashMap;
use std::sync::Arc;

use phigate_yaml::{Diagnostic, Locator, PathSeg};
use sha2::{Digest, Sha256};

use crate::file::{PolicyFile, RouteSpec};

/// Methods a route may name. Anything else in a request never matches.
pub const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A policy source: a file name (for diagnostics) and its text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

impl PolicySource {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// What a route requires of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A valid token carrying these scopes.
    Scopes(RequiredScopes),
}

/// Scopes required by a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequiredScopes {
    AllOf(Vec<String>),
    AnyOf(Vec<String>),
}

impl RequiredScopes {
    /// The listed scopes, in policy order.
    pub fn scopes(&self) -> &[String] {
        match self {
            RequiredScopes::AllOf(s) | RequiredScopes::AnyOf(s) => s,
        }
    }

    /// Whether `granted` satisfies this requirement. Scopes are opaque,
    /// exact-match strings: there is no implicit hierarchy.
    pub fn is_satisfied_by(&self, granted: &[String]) -> bool {
        let has = |s: &String| granted.iter().any(|g| g == s);
        match self {
            RequiredScopes::AllOf(req) => req.iter().all(has),
            RequiredScopes::AnyOf(req) => req.iter().any(has),
        }
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The `route` label: the route's name, or its path template.
    pub label: Arc<str>,
    /// The path template as written.
    pub template: String,
    pub methods: Vec<String>,
    pub access: Access,
    /// `file:line:column` of the route, for explanations.
    pub origin: String,
}

/// The compiled, immutable policy. Cheap to share behind an `Arc`; a reload
/// builds a new one and swaps it in.
#[derive(Debug, Clone)]
pub struct PolicySet {
    routes: Vec<Route>,
    /// One router per method: a `GET` lookup never lands on a `DELETE`-only
    /// route that happens to have a more specific template.
    routers: HashMap<&'static str, matchit::Router<usize>>,
    version: String,
}

impl PolicySet {
    /// Hash of the loaded policy sources (file names and contents), recorded
    /// as `policy_version` in every audit record.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// All compiled routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route matching `method` and canonical `path`, if any.
    pub fn match_route(&self, method: &str, path: &str) -> Option<&Route> {
        let router = self.routers.get(method)?;
        let m = router.at(path).ok()?;
        self.routes.get(*m.value)
    }
}

/// Translate our template syntax to matchit's and validate it.
fn to_matchit(template: &str) -> Result<String, String> {
    if !template.starts_with('/') {
        return Err("path must start with '/'".into());
    }
    if template == "/" {
        return Ok("/".into());
    }
    let segments: Vec<&str> = template[1..].split('/').collect();
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        out.push('/');
        if seg.is_empty() {
            return Err("path has an empty segment".into());
        }
        if *seg == "**" {
            if !last {
                return Err("'**' may only be the last segment".into());
            }
            out.push_str("{*rest}");
            continue;
        }
        if *seg == "." || *seg == ".." {
            return Err("path has a dot segment".into());
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid parameter name '{{{name}}}'"));
            }
            out.push_str(seg);
            continue;
        }
        if seg.contains(['{', '}', '*', '%', ';', '?', '#', '\\', ' ']) {
            return Err(format!(
                "segment '{seg}' must be a literal, a whole '{{param}}' or a final '**'"
            ));
        }
        out.push_str(seg);
    }
    Ok(out)
}

/// Compile policy sources into a [`PolicySet`].
///
/// Every source is parsed and validated; all problems across all files are
/// returned together, each with its `file:line:column`.
pub fn compile(sources: &[PolicySource]) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    let mut routers: HashMap<&'static str, matchit::Router<usize>> = HashMap::new();
    // (method, matchit template) -> origin of the first definition
    let mut seen: HashMap<(&'static str, String), String> = HashMap::new();

    if sources.is_empty() {
        errors.push(Diagnostic::new("<policies>", None, "no policy files found"));
    }

    for src in sources {
        let file: PolicyFile = match phigate_yaml::parse(&src.name, &src.text) {
            Ok(f) => f,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let locator = Locator::new(&src.text);
        let at = |path: &[PathSeg<'_>], msg: String| Diagnostic::new(&src.name, locator.locate(path), msg);

        if file.version != 1 {
            errors.push(at(
                &[PathSeg::Key("version")],
                format!("unsupported version {}, expected 1", file.version),
            ));
        }
        for (i, spec) in file.routes.iter().enumerate() {
            let route_path = [PathSeg::Key("routes"), PathSeg::Index(i)];
            let field = |k: &'static str| [PathSeg::Key("routes"), PathSeg::Index(i), PathSeg::Key(k)];
            let origin = at(&route_path, String::new());
            let origin = match origin.location {
                Some(l) => format!("{}:{}:{}", src.name, l.line, l.column),
                None => src.name.clone(),
            };
            match compile_route(spec, origin.clone()) {
                Err(problems) => {
                    for (key, msg) in problems {
                        errors.push(at(&field(key), msg));
                    }
                }
                Ok((route, pattern, methods)) => {
                    let idx = routes.len();
                    let mut inserted = false;
                    for m in methods {
                        if let Some(first) = seen.get(&(m, pattern.clone())) {
                            errors.push(at(
                                &field("path"),
                                format!("duplicate route {m} {} (first defined at {first})", spec.path),
                            ));
                            continue;
                        }
                        if let Err(e) = routers.entry(m).or_default().insert(pattern.clone(), idx) {
                            errors.push(at(
                                &field("path"),
                                format!("route {m} {} conflicts: {e}", spec.path),
                            ));
                            continue;
                        }
                        seen.insert((m, pattern.clone()), origin.clone());
                        inserted = true;
                    }
                    if inserted {
                        routes.push(route);
                    }
                }
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PolicySet {
        routes,
        routers,
        version: policy_hash(sources),
    })
}

type RouteProblems = Vec<(&'static str, String)>;

fn compile_route(
    spec: &RouteSpec,
    origin: String,
) -> Result<(Route, String, Vec<&'static str>), RouteProblems> {
    let mut problems: RouteProblems = Vec::new();
    let pattern = to_matchit(&spec.path)
        .map_err(|e| problems.push(("path", e)))
        .ok();

    let mut methods: Vec<&'static str> = Vec::new();
    if spec.methods.is_empty() {
        problems.push((
            "methods",
            "at least one method is required (use [\"*\"] for any)".into(),
        ));
    }
    for m in &spec.methods {
        if m == "*" {
            methods.extend_from_slice(METHODS);
        } else if let Some(known) = METHODS.iter().find(|k| **k == m) {
            methods.push(known);
        } else {
            problems.push((
                "methods",
                format!(
                    "unknown method '{m}' (expected one of {}, or \"*\")",
                    METHODS.join(", ")
                ),
            ));
        }
    }
    methods.sort_unstable();
    methods.dedup();

    let access = match (&spec.public, &spec.scopes) {
        (true, Some(_)) => {
            problems.push((
                "public",
                "a route is either public or requires scopes, not both".into(),
            ));
            None
        }
        (true, None) => Some(Access::Public),
        (false, None) => {
            problems.push(("path", "route must declare `scopes` or `public: true`".into()));
            None
        }
        (false, Some(s)) => {
            let (list, req) = match (&s.all_of, &s.any_of) {
                (Some(v), None) => (v.as_slice(), RequiredScopes::AllOf(v.clone())),
                (None, Some(v)) => (v.as_slice(), RequiredScopes::AnyOf(v.clone())),
                _ => {
                    problems.push((
                        "scopes",
                        "`scopes` needs exactly one of `all_of` or `any_of`".into(),
                    ));
                    (&[][..], RequiredScopes::AllOf(Vec::new()))
                }
            };
            if list.is_empty() && (s.all_of.is_some() != s.any_of.is_some()) {
                problems.push(("scopes", "scope list must not be empty".into()));
            }
            for scope in list {
                if scope.is_empty()
                    || scope
                        .bytes()
                        .any(|b| b <= 0x20 || b >= 0x7f || b == b'"' || b == b'\\')
                {
                    problems.push((
                        "scopes",
                        format!("invalid scope {scope:?} (RFC 6749 scope-token)"),
                    ));
                }
            }
            Some(Access::Scopes(req))
        }
    };
    if let Some(name) = &spec.name {
        if name.is_empty() || name.len() > 128 || name.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'"') {
            problems.push((
                "name",
                "route name must be 1-128 printable ASCII characters".into(),
            ));
        }
    }

    match (problems.is_empty(), pattern, access) {
        (true, Some(pattern), Some(access)) => {
            let label: Arc<str> = Arc::from(spec.name.clone().unwrap_or_else(|| spec.path.clone()));
            let route = Route {
                label,
                template: spec.path.clone(),
                methods: methods.iter().map(|m| m.to_string()).collect(),
                access,
                origin,
            };
            Ok((route, pattern, methods))
        }
        _ => Err(problems),
    }
}

fn policy_hash(sources: &[PolicySource]) -> String {
    let mut sorted: Vec<&PolicySource> = sources.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for s in sorted {
        h.update((s.name.len() as u64).to_be_bytes());
        h.update(s.name.as_bytes());
        h.update((s.text.len() as u64).to_be_bytes());
        h.update(s.text.as_bytes());
    }
    let digest = h.finalize();
    format!("sha256:{}", &hex::encode(digest)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<PolicySet, Vec<Diagnostic>> {
        compile(&[PolicySource::new("p.yaml", text)])
    }

    #[test]
    fn compiles_and_matches_templates() {
        let p = one(
            "version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/Patient/{id}\n    scopes: { any_of: [user/Patient.rs] }\n  - methods: [GET]\n    path: /fhir/metadata\n    public: true\n  - name: everything\n    methods: [\"*\"]\n    path: /fhir/**\n    scopes: { all_of: [admin] }\n",
        )
        .unwrap();
        assert_eq!(
            p.match_route("GET", "/fhir/Patient/1").unwrap().template,
            "/fhir/Patient/{id}"
        );
        assert_eq!(
            p.match_route("GET", "/fhir/metadata").unwrap().access,
            Access::Public
        );
        assert_eq!(
            &*p.match_route("DELETE", "/fhir/Patient/1").unwrap().label,
            "everything"
        );
        assert_eq!(
            &*p.match_route("GET", "/fhir/Patient/1/_history/2").unwrap().label,
            "everything"
        );
        assert!(p.match_route("GET", "/fhir").is_none());
        assert!(p.match_route("GET", "/other").is_none());
        assert!(p.match_route("BREW", "/fhir/metadata").is_none());
        // Case-sensitive.
        assert_eq!(
            &*p.match_route("GET", "/fhir/patient/1").unwrap().label,
            "everything"
        );
        assert!(p.match_route("GET", "/FHIR/metadata").is_none());
        assert!(p.version().starts_with("sha256:"));
    }

    #[test]
    fn reports_every_error_with_location() {
        let errs = compile(&[
            PolicySource::new(
                "a.yaml",
                "version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    scopes: { any_of: [a] }\n  - methods: [FETCH]\n    path: /y/**/z\n    scopes: { any_of: [] }\n  - methods: [GET]\n    path: /x\n    public: true\n",
            ),
            PolicySource::new("b.yaml", "version: 1\nroutes:\n  - methods: [GET]\n    path: /z\n    scopez: {}\n"),
        ])
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let joined = text.join("\n");
        assert!(joined.contains("a.yaml:6:"), "{joined}"); // unknown method
        assert!(
            joined.contains("a.yaml:7:") && joined.contains("'**'"),
            "{joined}"
        );
        assert!(
            joined.contains("a.yaml:8:") && joined.contains("must not be empty"),
            "{joined}"
        );
        assert!(
            joined.contains("a.yaml:10:") && joined.contains("duplicate route GET /x"),
            "{joined}"
        );
        assert!(
            joined.contains("b.yaml:5:") && joined.contains("unknown field `scopez`"),
            "{joined}"
        );
    }

    #[test]
    fn duplicate_across_files_is_an_error() {
        let r = "version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    public: true\n";
        let errs = compile(&[PolicySource::new("a.yaml", r), PolicySource::new("b.yaml", r)]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].to_string().contains("first defined at a.yaml:3:"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn conflicting_parameter_names_are_errors() {
        let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x/{id}\n    public: true\n  - methods: [GET]\n    path: /x/{name}\n    public: true\n").unwrap_err();
        assert!(errs[0].to_string().contains("conflicts"), "{}", errs[0]);
    }

    #[test]
    fn route_needs_access_declaration() {
        let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n").unwrap_err();
        assert!(errs[0].message.contains("`scopes` or `public: true`"));
        let errs = one("version: 1\nroutes:\n  - methods: [GET]\n    path: /x\n    public: true\n    scopes: { all_of: [a] }\n").unwrap_err();
        assert!(errs[0].message.contains("not both"));
    }

    #[test]
    fn version_hash_changes_with_content() {
        let a = one("version: 1\nroutes: []\n").unwrap();
        let b = one("version: 1\nroutes: []\n# changed\n").unwrap();
        assert_ne!(a.version(), b.version());
    }

    #[test]
    fn no_sources_is_an_error() {
        assert!(compile(&[]).is_err());
    }

    #[test]
    fn scope_requirements() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let all = RequiredScopes::AllOf(g(&["a", "b"]));
        let any = RequiredScopes::AnyOf(g(&["a", "b"]));
        assert!(all.is_satisfied_by(&g(&["b", "a", "c"])));
        assert!(!all.is_satisfied_by(&g(&["a"])));
        assert!(any.is_satisfied_by(&g(&["b"])));
        assert!(!any.is_satisfied_by(&g(&["c"])));
        // No implicit hierarchy.
        let versioned = RequiredScopes::AllOf(g(&["v1.patient.records.read"]));
        assert!(!versioned.is_satisfied_by(&g(&["v1.patient", "v1", "v1.patient.records"])));
    }
}
