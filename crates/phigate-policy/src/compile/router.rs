//! Route templates and the per-method routers: [`to_matchit`] validates a
//! path template (literals, whole `{param}` segments, a final `**`) and
//! translates it to matchit syntax; [`route_param_name`] maps matchit's
//! parameter names back to the template's.

use std::collections::HashMap;

/// One router per method: a `GET` lookup never lands on a `DELETE`-only
/// route that happens to have a more specific template. The values index
/// the policy's routes.
pub(super) type Routers = HashMap<&'static str, matchit::Router<usize>>;

/// The `&'static`-free parameter name as it appears in the template (matchit
/// hands back names borrowed from the router; we map them to the route's own).
pub(super) fn route_param_name<'a>(template: &'a str, name: &str) -> Option<&'a str> {
    if name == "rest" && template.ends_with("**") {
        return Some(&template[template.len() - 2..]);
    }
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .find(|n| *n == name)
}

/// Translate our template syntax to matchit's and validate it.
pub(super) fn to_matchit(template: &str) -> Result<String, String> {
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
