//! SMART on FHIR scopes (App Launch v1 and v2), parsed rather than
//! string-compared.
//!
//! A SMART scope is `(patient|user|system)/(ResourceType|*).(perms)[?query]`:
//!
//! - v2 permissions are a non-empty subsequence of `c r u d s` in that order
//!   (`rs`, `cruds`, `cud`); `sr` and `rr` are rejected, not normalised;
//! - v1 permissions `read`, `write` and `*` are mapped to `rs`, `cud` and
//!   `cruds`, so `patient/Observation.read` and `patient/Observation.rs`
//!   parse to the same [`SmartScope`];
//! - a `?k=v&k2=v2` suffix (v2 "granular" scopes) is only valid with v2
//!   permissions; keys and values are percent-decoded and must be non-empty.
//!
//! Everything that does not fit is an error: a scope that only looks
//! almost right must never grant anything.

use std::fmt;

// The FHIR R4 resource type names (`KNOWN_RESOURCE_TYPES`, `is_type_name`)
// live in their own file; re-exported here.
mod resource_types;

pub(crate) use resource_types::is_type_name;
pub use resource_types::{is_known_resource_type, KNOWN_RESOURCE_TYPES};

/// The launch context a scope applies to: the `patient/`, `user/` or
/// `system/` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// `patient/`: data in the compartment of the patient in context.
    Patient,
    /// `user/`: data the signed-in user may access.
    User,
    /// `system/`: backend-service access without a user.
    System,
}

impl Context {
    /// The scope prefix without the slash: `patient`, `user` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// One SMART v2 permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// `c`: create.
    C,
    /// `r`: read (instance read, vread, instance history).
    R,
    /// `u`: update (and patch).
    U,
    /// `d`: delete.
    D,
    /// `s`: search (type-level search and history).
    S,
}

impl Perm {
    /// All permissions in canonical `c r u d s` order.
    pub const ALL: [Perm; 5] = [Perm::C, Perm::R, Perm::U, Perm::D, Perm::S];

    /// The permission's letter in a v2 scope.
    pub fn letter(self) -> char {
        match self {
            Perm::C => 'c',
            Perm::R => 'r',
            Perm::U => 'u',
            Perm::D => 'd',
            Perm::S => 's',
        }
    }

    /// The permission for a v2 letter, if it is one of `c r u d s`.
    pub fn from_letter(letter: char) -> Option<Perm> {
        Perm::ALL.into_iter().find(|p| p.letter() == letter)
    }

    fn bit(self) -> u8 {
        match self {
            Perm::C => 1,
            Perm::R => 1 << 1,
            Perm::U => 1 << 2,
            Perm::D => 1 << 3,
            Perm::S => 1 << 4,
        }
    }
}

/// A set of [`Perm`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Perms(u8);

impl Perms {
    /// No permission at all.
    pub const NONE: Perms = Perms(0);
    /// `cruds`, what v1 `*` means.
    pub const ALL: Perms = Perms(0b1_1111);
    /// `rs`, what v1 `read` means.
    pub const V1_READ: Perms = Perms(0b1_0010);
    /// `cud`, what v1 `write` means.
    pub const V1_WRITE: Perms = Perms(0b0_1101);

    /// Whether `perm` is in the set.
    pub fn contains(self, perm: Perm) -> bool {
        self.0 & perm.bit() != 0
    }

    /// The set with `perm` added.
    pub fn with(self, perm: Perm) -> Perms {
        Perms(self.0 | perm.bit())
    }

    /// Every permission in either set.
    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as v2 letters in `cruds` order, e.g. `"rs"`; empty for
    /// [`Perms::NONE`].
    pub fn as_str(self) -> String {
        Perm::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .map(Perm::letter)
            .collect()
    }
}

impl From<Perm> for Perms {
    fn from(perm: Perm) -> Perms {
        Perms(perm.bit())
    }
}

impl FromIterator<Perm> for Perms {
    fn from_iter<I: IntoIterator<Item = Perm>>(iter: I) -> Perms {
        iter.into_iter().fold(Perms::NONE, Perms::with)
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A parsed SMART scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartScope {
    /// The `patient/`, `user/` or `system/` prefix.
    pub context: Context,
    /// The FHIR resource type; `None` means `*` (every type).
    pub resource: Option<String>,
    /// The granted permissions (v1 forms already mapped to v2).
    pub perms: Perms,
    /// v2 granular filters `?param=value(&param=value)*`, percent-decoded,
    /// in scope order. Empty for a non-granular scope.
    pub filters: Vec<(String, String)>,
}

impl SmartScope {
    /// Whether this scope grants `perm` on `resource_type`, ignoring
    /// filters. Resource types compare case-sensitively; `*` matches every
    /// type.
    pub fn grants(&self, resource_type: &str, perm: Perm) -> bool {
        self.perms.contains(perm) && self.resource.as_deref().is_none_or(|r| r == resource_type)
    }

    /// Whether the scope carries `?param=value` filters (v2 granular scope).
    pub fn is_granular(&self) -> bool {
        !self.filters.is_empty()
    }
}

/// Why a scope string is not a valid SMART scope. `Display` names the scope
/// and explains what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A character outside the RFC 6749 `scope-token` alphabet.
    #[error(
        "scope {scope:?}: invalid character {ch:?}; a scope is a single token of printable ASCII \
         without spaces, '\"' or '\\'"
    )]
    InvalidCharacter {
        /// The scope as given.
        scope: String,
        /// The offending character.
        ch: char,
    },
    /// The scope does not start with `patient/`, `user/` or `system/`.
    #[error("scope {0:?} is not a SMART scope: it must start with \"patient/\", \"user/\" or \"system/\"")]
    Context(String),
    /// No `.` between resource type and permissions.
    #[error(
        "scope {0:?}: missing '.' between the resource type and the permissions \
         (expected e.g. \"patient/Observation.rs\")"
    )]
    MissingDot(String),
    /// The resource type is neither `*` nor a FHIR type name.
    #[error(
        "scope {scope:?}: resource type {resource:?} must be '*' or a FHIR resource type name \
         (an upper-case ASCII letter followed by ASCII letters and digits, e.g. \"Observation\")"
    )]
    ResourceType {
        /// The scope as given.
        scope: String,
        /// The resource type part.
        resource: String,
    },
    /// The permissions are neither v1 nor a valid v2 subsequence.
    #[error(
        "scope {scope:?}: invalid permissions {perms:?} ({why}); permissions must be a subsequence \
         of c r u d s in that order (v2, e.g. \"rs\" or \"cruds\") or one of read, write, * (v1)"
    )]
    Permissions {
        /// The scope as given.
        scope: String,
        /// The permissions part.
        perms: String,
        /// What exactly is wrong with it.
        why: String,
    },
    /// A `?` filter on a v1 scope.
    #[error(
        "scope {0:?}: a '?' filter is only valid with SMART v2 permissions (e.g. \".rs\"), \
         not with v1 read, write or *"
    )]
    FilterOnV1(String),
    /// A malformed `?param=value` filter.
    #[error("scope {scope:?}: invalid filter: {why}")]
    Filter {
        /// The scope as given.
        scope: String,
        /// What exactly is wrong with it.
        why: String,
    },
}

/// Whether `scope` claims to be a SMART scope: it starts with `patient/`,
/// `user/` or `system/`. Says nothing about whether it parses.
pub fn looks_like_smart(scope: &str) -> bool {
    ["patient/", "user/", "system/"]
        .iter()
        .any(|p| scope.starts_with(p))
}

/// Parses one SMART scope (v1 or v2). See the module docs for the grammar.
pub fn parse(scope: &str) -> Result<SmartScope, ScopeError> {
    // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
    if let Some(ch) = scope
        .chars()
        .find(|c| !matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E'))
    {
        return Err(ScopeError::InvalidCharacter {
            scope: scope.to_owned(),
            ch,
        });
    }
    let (context, rest) = scope
        .split_once('/')
        .ok_or_else(|| ScopeError::Context(scope.to_owned()))?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return Err(ScopeError::Context(scope.to_owned())),
    };
    let (body, query) = match rest.split_once('?') {
        Some((body, query)) => (body, Some(query)),
        None => (rest, None),
    };
    let (resource, perms) = body
        .split_once('.')
        .ok_or_else(|| ScopeError::MissingDot(scope.to_owned()))?;
    let resource = match resource {
        "*" => None,
        r if is_type_name(r) => Some(r.to_owned()),
        r => {
            return Err(ScopeError::ResourceType {
                scope: scope.to_owned(),
                resource: r.to_owned(),
            })
        }
    };
    let (perms, v2) = match perms {
        "read" => (Perms::V1_READ, false),
        "write" => (Perms::V1_WRITE, false),
        "*" => (Perms::ALL, false),
        p => match parse_v2_perms(p) {
            Ok(perms) => (perms, true),
            Err(why) => {
                return Err(ScopeError::Permissions {
                    scope: scope.to_owned(),
                    perms: p.to_owned(),
                    why,
                })
            }
        },
    };
    let filters = match query {
        None => Vec::new(),
        Some(_) if !v2 => return Err(ScopeError::FilterOnV1(scope.to_owned())),
        Some(q) => parse_filters(q).map_err(|why| ScopeError::Filter {
            scope: scope.to_owned(),
            why,
        })?,
    };
    Ok(SmartScope {
        context,
        resource,
        perms,
        filters,
    })
}

/// The SMART scopes in a list of granted scope strings, in order.
/// Non-SMART entries (`openid`, `launch/patient`, ...) and SMART-looking
/// entries that do not parse are skipped: they grant nothing.
pub fn granted(scopes: &[String]) -> Vec<SmartScope> {
    scopes
        .iter()
        .filter(|s| looks_like_smart(s))
        .filter_map(|s| parse(s).ok())
        .collect()
}

/// As [`granted`], keeping each scope's string (for `scope_used`).
pub fn granted_with_sources(scopes: &[String]) -> Vec<(&str, SmartScope)> {
    scopes
        .iter()
        .filter(|s| looks_like_smart(s))
        .filter_map(|s| parse(s).ok().map(|p| (s.as_str(), p)))
        .collect()
}

/// Does a granular filter value accept the request's values for that
/// search parameter?
///
/// `request_values` is the (decoded) value of one request parameter; it is
/// split on unescaped `,` (FHIR OR) and EVERY value must match, otherwise
/// the request could widen past the filter. A value matches when it equals
/// `filter_value`, or when it is a token `system|code` and `filter_value`
/// is the bare `code` (the request narrows to one system). A `system|code`
/// filter does not accept a bare `code` request, which would also match
/// other systems. Empty values never match. Values are compared in their
/// escaped form (`\,` `\|` `\\`), so differently-escaped spellings of the
/// same value do not match: fail closed.
pub fn filter_accepts(filter_value: &str, request_values: &str) -> bool {
    if filter_value.is_empty() {
        return false;
    }
    split_unescaped(request_values, ',').into_iter().all(|value| {
        if value.is_empty() {
            return false;
        }
        if value == filter_value {
            return true;
        }
        let filter_is_bare = split_unescaped(filter_value, '|').len() == 1;
        match split_unescaped(value, '|').as_slice() {
            [_system, code] => filter_is_bare && *code == filter_value,
            _ => false,
        }
    })
}

fn parse_v2_perms(p: &str) -> Result<Perms, String> {
    if p.is_empty() {
        return Err("they are empty".to_owned());
    }
    let mut perms = Perms::NONE;
    let mut last: Option<Perm> = None;
    for ch in p.chars() {
        let perm = Perm::from_letter(ch).ok_or_else(|| format!("{ch:?} is not one of c r u d s"))?;
        if let Some(last) = last {
            if perm == last {
                return Err(format!("{ch:?} is repeated"));
            }
            if (perm as u8) < (last as u8) {
                return Err(format!("{ch:?} comes after {:?}", last.letter()));
            }
        }
        perms = perms.with(perm);
        last = Some(perm);
    }
    Ok(perms)
}

fn parse_filters(query: &str) -> Result<Vec<(String, String)>, String> {
    if query.is_empty() {
        return Err("nothing after '?'".to_owned());
    }
    query
        .split('&')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not of the form param=value"))?;
            let k = percent_decode(k, false).map_err(|e| format!("parameter {k:?}: {e}"))?;
            let v = percent_decode(v, false).map_err(|e| format!("value {v:?}: {e}"))?;
            if k.is_empty() {
                return Err(format!("{pair:?} has an empty parameter name"));
            }
            if v.is_empty() {
                return Err(format!("{pair:?} has an empty value"));
            }
            Ok((k, v))
        })
        .collect()
}

/// Strict percent-decoding: every `%` must start a `%XX` escape and the
/// result must be UTF-8. With `plus_as_space`, `+` decodes to a space
/// (application/x-www-form-urlencoded).
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err("invalid percent-encoding ('%' must be followed by two hex digits)"),
                }
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding does not decode to UTF-8")
}

/// Splits on `sep` where it is not escaped by a backslash (FHIR search
/// escaping: `\,` `\|` `\$` `\\`). The parts keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests;
