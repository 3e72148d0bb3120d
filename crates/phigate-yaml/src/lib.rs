//! The one place in phigate that knows which YAML library is in use.
//!
//! `serde_yaml` is deprecated upstream; we use the maintained drop-in fork
//! `serde_yaml_ng` for typed deserialisation and `yaml-rust2`'s event parser to
//! find where a value sits in the source, so that every configuration error can
//! be reported as `file:line:column: message`. Swapping the YAML library means
//! editing this crate only.
#![forbid(unsafe_code)]

mod env;

use std::fmt;

use serde::de::DeserializeOwned;
use yaml_rust2::parser::{Event, Parser};

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem found in a configuration or policy file.
///
/// Displays as `file:line:column: message` (or `file: message` when the
/// position is unknown), the format editors and CI annotators understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub location: Option<Location>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            location,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(l) => write!(f, "{}:{}:{}: {}", self.file, l.line, l.column, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Deserialise `src` (the text of `file`) into `T`.
///
/// Syntax errors, type errors, unknown keys (with `#[serde(deny_unknown_fields)]`)
/// and duplicate keys are reported with the position the YAML library gives.
pub fn parse<T: DeserializeOwned>(file: &str, src: &str) -> Result<T, Diagnostic> {
    if src.trim().is_empty() {
        return Err(Diagnostic::new(file, None, "file is empty"));
    }
    serde_yaml_ng::from_str::<T>(src).map_err(|e| {
        let location = e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        Diagnostic::new(file, location, strip_position(&e.to_string()))
    })
}

/// Deserialise `src` into `T`, reporting **every** problem rather than the
/// first: a value serde refuses (an unknown key, a bad duration, a string
/// where a number belongs) is reported at its `file:line:column`, removed
/// from the document, and deserialisation is tried again, until it
/// succeeds or nothing more can be removed.
///
/// Returns the value deserialised from what was left (so the caller can go
/// on validating it and report its own errors too) together with the
/// problems; the value is `None` when the document could not be read at all
/// (a syntax error, or a required key that was itself an error — make keys
/// `Option` and check presence after parsing to keep going in that case).
/// Any diagnostic means the file is invalid, whatever the value.
pub fn parse_all<T: DeserializeOwned>(file: &str, src: &str) -> (Option<T>, Vec<Diagnostic>) {
    let (value, errors, _) = parse_all_located(file, src);
    (value, errors)
}

/// As [`parse_all`], plus a [`Locator`] for the value returned: paths into
/// what was left (where list items after a removed one have moved up) are
/// mapped back to their position in the original text, so the caller's own
/// errors point at the right line too.
pub fn parse_all_located<T: DeserializeOwned>(
    file: &str,
    src: &str,
) -> (Option<T>, Vec<Diagnostic>, Locator) {
    let (value, errors, removed) = parse_all_core(file, src, None);
    let mut locator = Locator::new(src);
    locator.removed = removed.paths;
    (value, errors, locator)
}

/// As [`parse_all_located`], with environment variables substituted into the
/// document's values first; `env` looks a variable up (`None`: not set), e.g.
/// `&|name| std::env::var(name).ok()`.
///
/// # Environment variables
///
/// - `${VAR}` is replaced by the value of `VAR`; `${VAR:-default}` by the
///   value, or by `default` when `VAR` is unset **or empty** (as in a shell).
///   `default` is literal text up to the first `}` (it cannot contain `}` or
///   another reference). `$$` is a literal `$`; a `$` followed by anything
///   but `{` or `$` is itself. A name is `[A-Za-z_][A-Za-z0-9_]*`.
/// - Anything else in `${…}` (`${1abc}`, `${VAR:?msg}`, `${VAR-x}`, `${}`,
///   a `${` without `}`) is an error at its `${`. So is a variable that is
///   not set and has no default: `environment variable `VAR` is not set (use
///   ${VAR:-default} for a default)`. Every such error in the file is
///   reported, with the other errors of the file, in one run.
/// - Only scalar **values** are substituted, in the whole document (block
///   and flow mappings and sequences, quoted, plain and block scalars): never
///   keys, never comments. The structure of the document is read from the
///   file before any substitution, so a value cannot change it: whatever the
///   value holds (`: `, `#`, `- `, quotes, brackets, line breaks) becomes
///   part of that one scalar.
/// - Typing: an unquoted value that is exactly one reference
///   (`threads: ${THREADS}`, `h2c: ${H2C:-false}`) is typed as if its text
///   had been written there: a number, `true`/`false`, `null`/`~` (and empty
///   text) as such, anything else a string. A quoted value, a block scalar
///   (`|`, `>`), a value with an explicit tag, or one that mixes references
///   with other text (`url: "https://${HOST}/x"`, `path: /etc/${APP}/cert.pem`)
///   is always a string.
/// - Inside a flow collection (`[…]`, `{…}`) YAML does not allow `{` in an
///   unquoted value: quote the reference there (`ports: ["${PORT}"]`).
/// - Every position reported — syntax errors, type errors, unknown keys,
///   and the caller's own errors through the returned [`Locator`] — is in
///   the file as written.
/// - Values are never shown in messages (they may be secrets): an error
///   about a substituted value names its references instead, e.g.
///   `invalid type: string (value from ${PORT}), expected u16`.
pub fn parse_all_located_env<T: DeserializeOwned>(
    file: &str,
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<T>, Vec<Diagnostic>, Locator) {
    let (value, mut errors, removed) = parse_all_core(file, src, Some(env));
    // Substitution problems come first: put everything in reading order.
    errors.sort_by_key(|d| (d.location.is_none(), d.location));
    let mut locator = Locator::new(src);
    locator.removed = removed.paths;
    (value, errors, locator)
}

fn parse_all_core<T: DeserializeOwned>(
    file: &str,
    src: &str,
    env: Option<env::Env<'_>>,
) -> (Option<T>, Vec<Diagnostic>, Removed) {
    let mut removed = Removed::default();
    if src.trim().is_empty() {
        return (None, vec![Diagnostic::new(file, None, "file is empty")], removed);
    }
    let mut value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(src) {
        Ok(v) => v,
        Err(e) => {
            let location = e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            let mut message = strip_position(&e.to_string());
            if env.is_some() && location.is_some_and(|l| flow_reference_on(src, l.line)) {
                message.push_str(" (inside [ ] or { }, quote an environment variable reference: \"${VAR}\")");
            }
            return (None, vec![Diagnostic::new(file, location, message)], removed);
        }
    };
    let locator = Locator::new(src);
    let mut errors = Vec::new();
    let mut secrets = env::Secrets::default();
    if let Some(env) = env {
        let outcome = env::substitute(&mut value, src, env, &locator);
        errors.extend(
            outcome
                .errors
                .into_iter()
                .map(|(location, message)| Diagnostic::new(file, location, message)),
        );
        removed.paths.extend(outcome.removed);
        secrets = outcome.secrets;
        if outcome.root_failed {
            return (None, errors, removed);
        }
    }
    // Each round removes one node, so the document bounds the rounds.
    for _ in 0..10_000 {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return (Some(t), errors, removed),
            Err(e) => e,
        };
        let current: Vec<OwnedSeg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(OwnedSeg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(OwnedSeg::Index(*index)),
                _ => None,
            })
            .collect();
        let message = strip_position(&err.inner().to_string());
        // An unknown key inside an internally tagged enum is reported at the
        // enclosing value: point at (and remove) the key itself.
        let mut target = current.clone();
        if let Some(key) = backticked(&message, "unknown field `") {
            if target.last() != Some(&OwnedSeg::Key(key.clone())) {
                target.push(OwnedSeg::Key(key));
            }
        }
        if let Some(field) = backticked(&message, "missing field `") {
            let mut p = removed.to_original(&current);
            p.push(OwnedSeg::Key(field));
            if removed.contains(&p) {
                // Only missing because its bad value was removed (reported
                // already): remove the value that needs it and go on.
                let parent = removed.to_original(&current);
                if current.is_empty() || !remove_node(&mut value, &current) {
                    return (None, errors, removed);
                }
                removed.paths.push(parent);
                continue;
            }
        }
        let original = removed.to_original(&target);
        let at: Vec<PathSeg<'_>> = original
            .iter()
            .map(|s| match s {
                OwnedSeg::Key(k) => PathSeg::Key(k),
                OwnedSeg::Index(i) => PathSeg::Index(*i),
            })
            .collect();
        let message = secrets.scrub(&original, message);
        errors.push(Diagnostic::new(file, locator.locate(&at), message));
        if target.is_empty() || !remove_node(&mut value, &target) {
            return (None, errors, removed);
        }
        removed.paths.push(original);
    }
    (None, errors, removed)
}

/// Line `line` (1-based) of `src` has an unquoted `${` inside a flow
/// collection, which YAML cannot read (`{` ends a flow scalar).
fn flow_reference_on(src: &str, line: usize) -> bool {
    src.lines().nth(line.saturating_sub(1)).is_some_and(|l| {
        l.contains("${") && (l.contains('[') || l.matches('{').count() > l.matches("${").count())
    })
}

/// The name between backticks after `prefix` in a serde message.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// Nodes removed by [`parse_all`], by their path in the original document,
/// to map paths in the edited document back (sequence indices shift).
#[derive(Default)]
struct Removed {
    paths: Vec<Vec<OwnedSeg>>,
}

impl Removed {
    fn contains(&self, path: &[OwnedSeg]) -> bool {
        self.paths.iter().any(|p| p == path)
    }

    fn to_original(&self, current: &[OwnedSeg]) -> Vec<OwnedSeg> {
        let mut out: Vec<OwnedSeg> = Vec::with_capacity(current.len());
        for seg in current {
            match seg {
                OwnedSeg::Key(k) => out.push(OwnedSeg::Key(k.clone())),
                OwnedSeg::Index(i) => {
                    // The i-th element of this sequence that was not removed.
                    let mut gone: Vec<usize> = self
                        .paths
                        .iter()
                        .filter(|p| p.len() == out.len() + 1 && p[..out.len()] == out[..])
                        .filter_map(|p| match p.last() {
                            Some(OwnedSeg::Index(j)) => Some(*j),
                            _ => None,
                        })
                        .collect();
                    gone.sort_unstable();
                    let mut orig = *i;
                    for g in gone {
                        if g <= orig {
                            orig += 1;
                        }
                    }
                    out.push(OwnedSeg::Index(orig));
                }
            }
        }
        out
    }
}

/// Remove the node at `path` from a YAML value; false if there is none.
fn remove_node(value: &mut serde_yaml_ng::Value, path: &[OwnedSeg]) -> bool {
    use serde_yaml_ng::Value;
    let Some((last, init)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in init {
        let next = match (seg, cur) {
            (OwnedSeg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (OwnedSeg::Index(i), Value::Sequence(q)) => q.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        // shift_remove keeps document order, so errors stay in reading order.
        (OwnedSeg::Key(k), Value::Mapping(m)) => m.shift_remove(k.as_str()).is_some(),
        (OwnedSeg::Index(i), Value::Sequence(q)) if *i < q.len() => {
            q.remove(*i);
            true
        }
        _ => false,
    }
}

/// serde_yaml_ng appends " at line L column C" to its messages; we print the
/// position in front instead, so remove the suffix.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// One step of a path into a YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSeg<'a> {
    /// A key of a mapping.
    Key(&'a str),
    /// An index of a sequence.
    Index(usize),
}

/// Finds the source position of a node by its path, e.g. `routes[3].path`.
///
/// Used to point semantic errors (found after deserialisation, where serde
/// has no positions any more) at the right line. For a mapping key the
/// position of the *value* is returned.
#[derive(Debug, Clone)]
pub struct Locator {
    nodes: Vec<(Vec<OwnedSeg>, Location)>,
    /// Nodes [`parse_all_located`] removed (original paths): paths given to
    /// [`Locator::locate`] are into the document without them.
    removed: Vec<Vec<OwnedSeg>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedSeg {
    Key(String),
    Index(usize),
}

impl Locator {
    /// Index every node of the first document in `src`. Unparsable input
    /// yields an empty locator (the parse error itself is reported by [`parse`]).
    pub fn new(src: &str) -> Self {
        let mut nodes: Vec<(Vec<OwnedSeg>, Location)> = Vec::new();
        let mut parser = Parser::new_from_str(src);
        // Stack of containers: (is_mapping, next index / expecting key, current key)
        enum Frame {
            Seq(usize),
            // `node` indexes the mapping's own entry in `nodes`: its position
            // is corrected to the first key's, since the parser marks block
            // mappings at the first `:`.
            Map {
                key: Option<String>,
                node: Option<usize>,
            },
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut path: Vec<OwnedSeg> = Vec::new();
        while let Ok((event, marker)) = parser.next_token() {
            let loc = Location {
                line: marker.line(),
                column: marker.col() + 1,
            };
            // Compute the path of this node (if it is a value) before handling it.
            let is_node_start = matches!(
                event,
                Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) | Event::Alias(..)
            );
            if is_node_start {
                // Is this node a mapping key?
                if let Some(Frame::Map { key, node }) = stack.last_mut() {
                    if key.is_none() {
                        if let Event::Scalar(ref s, ..) = event {
                            *key = Some(s.clone());
                            if let Some(i) = node.take() {
                                if let Some(entry) = nodes.get_mut(i) {
                                    entry.1 = loc;
                                }
                            }
                            continue;
                        }
                        // Complex keys are not used by phigate; mark and skip.
                        *key = Some(String::new());
                    }
                }
                let seg = match stack.last_mut() {
                    Some(Frame::Seq(i)) => {
                        let s = OwnedSeg::Index(*i);
                        *i += 1;
                        Some(s)
                    }
                    Some(Frame::Map { key, .. }) => key.take().map(OwnedSeg::Key),
                    None => None,
                };
                let mut node_path = path.clone();
                if let Some(s) = seg.clone() {
                    node_path.push(s);
                }
                nodes.push((node_path.clone(), loc));
                match event {
                    Event::SequenceStart(..) => {
                        stack.push(Frame::Seq(0));
                        path = node_path;
                    }
                    Event::MappingStart(..) => {
                        stack.push(Frame::Map {
                            key: None,
                            node: Some(nodes.len() - 1),
                        });
                        path = node_path;
                    }
                    _ => {}
                }
                continue;
            }
            match event {
                Event::SequenceEnd | Event::MappingEnd => {
                    stack.pop();
                    path.pop();
                }
                Event::DocumentEnd | Event::StreamEnd => break,
                _ => {}
            }
        }
        Self {
            nodes,
            removed: Vec::new(),
        }
    }

    /// The position of the node at `path`, or of its closest existing ancestor.
    pub fn locate(&self, path: &[PathSeg<'_>]) -> Option<Location> {
        let owned: Vec<OwnedSeg> = path
            .iter()
            .map(|s| match s {
                PathSeg::Key(k) => OwnedSeg::Key((*k).to_string()),
                PathSeg::Index(i) => OwnedSeg::Index(*i),
            })
            .collect();
        let original = Removed {
            paths: self.removed.clone(),
        }
        .to_original(&owned);
        let path: Vec<PathSeg<'_>> = original
            .iter()
            .map(|s| match s {
                OwnedSeg::Key(k) => PathSeg::Key(k),
                OwnedSeg::Index(i) => PathSeg::Index(*i),
            })
            .collect();
        for len in (0..=path.len()).rev() {
            let want = &path[..len];
            let hit = self.nodes.iter().find(|(p, _)| {
                p.len() == want.len()
                    && p.iter().zip(want).all(|(a, b)| match (a, b) {
                        (OwnedSeg::Key(a), PathSeg::Key(b)) => a == b,
                        (OwnedSeg::Index(a), PathSeg::Index(b)) => a == b,
                        _ => false,
                    })
            });
            if let Some((_, loc)) = hit {
                return Some(*loc);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        items: Vec<Item>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        path: String,
        #[serde(default)]
        n: u32,
    }

    const SRC: &str = "name: x\nitems:\n  - path: /a\n    n: 1\n  - path: /b\n    n: 2\n";

    #[test]
    fn parses_valid_document() {
        let d: Doc = parse("f.yaml", SRC).unwrap();
        assert_eq!(d.items.len(), 2);
    }

    #[test]
    fn unknown_key_is_reported_with_position() {
        let src = "name: x\nitems:\n  - path: /a\n    bogus: 1\n";
        let e = parse::<Doc>("f.yaml", src).unwrap_err();
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert_eq!(e.location.map(|l| l.line), Some(4), "{e}");
        assert!(e.to_string().starts_with("f.yaml:4:"), "{e}");
    }

    #[test]
    fn type_error_is_reported_with_position() {
        let src = "name: x\nitems:\n  - path: /a\n    n: lots\n";
        let e = parse::<Doc>("f.yaml", src).unwrap_err();
        assert_eq!(e.location.map(|l| l.line), Some(4), "{e}");
    }

    #[test]
    fn syntax_error_is_reported_with_position() {
        let src = "name: x\nitems:\n  - path: [/a\n";
        let e = parse::<Doc>("f.yaml", src).unwrap_err();
        assert!(e.location.is_some(), "{e}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let src = "name: x\nname: y\nitems: []\n";
        let e = parse::<Doc>("f.yaml", src).unwrap_err();
        assert!(e.message.contains("duplicate"), "{e}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        listen: Option<String>,
        #[serde(default)]
        threads: Option<u32>,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        sinks: Vec<Sink>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    #[allow(dead_code)]
    enum Sink {
        Nats { name: String, url: String },
        Stdout { name: String },
    }

    #[test]
    fn parse_all_reports_every_error_with_its_position() {
        let src = "listen: x\nbogus: 1\nthreads: many\nitems:\n  - path: /a\n    n: lots\n  - path: /b\n    oops: 2\n  - path: /c\n    n: 3\nsinks:\n  - type: nats\n    name: a\n    url: u\n    extra: 1\n  - type: weird\n    name: b\n";
        let (value, errors) = parse_all::<Config>("g.yaml", src);
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let want = [
            "g.yaml:2:8: unknown field `bogus`",
            "g.yaml:3:10: invalid type: string \"many\"",
            "g.yaml:6:8: invalid type: string \"lots\"",
            "g.yaml:8:11: unknown field `oops`",
            "g.yaml:15:12: unknown field `extra`",
            "g.yaml:16:11: unknown variant `weird`",
        ];
        assert_eq!(shown.len(), want.len(), "{shown:#?}");
        for (got, want) in shown.iter().zip(want) {
            assert!(got.starts_with(want), "{got} does not start with {want}");
        }
        // What was left still deserialised, for the caller's own checks.
        let v = value.unwrap();
        assert_eq!(v.listen.as_deref(), Some("x"));
        assert_eq!(v.items.len(), 3);
        assert_eq!(v.items[2].n, 3);
        assert_eq!(v.sinks.len(), 1);
    }

    #[test]
    fn parse_all_gives_up_only_when_the_root_needs_a_removed_key() {
        // `name` is required: its bad value is reported, and so is what follows.
        let (value, errors) = parse_all::<Doc>("f.yaml", "name: [x]\nitems: []\nbogus: 1\n");
        assert!(value.is_none());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].to_string().starts_with("f.yaml:1:7: invalid type"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1]
                .to_string()
                .starts_with("f.yaml:3:8: unknown field `bogus`"),
            "{}",
            errors[1]
        );
        // A required key of a list item: the item goes, the rest is checked.
        let (value, errors) = parse_all::<Doc>(
            "f.yaml",
            "name: x\nitems:\n  - path: [1]\n  - path: /b\n    n: many\n",
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[1].to_string().starts_with("f.yaml:5:8: invalid type"),
            "{}",
            errors[1]
        );
        assert_eq!(value.map(|d| d.items.len()), Some(1));
        let (value, errors) = parse_all::<Doc>("f.yaml", "name: x\nitems: [\n");
        assert!(value.is_none() && errors.len() == 1 && errors[0].location.is_some());
        let (value, errors) = parse_all::<Doc>("f.yaml", "name: x\nitems: []\n");
        assert!(value.is_some() && errors.is_empty());
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(parse::<Doc>("f.yaml", "  \n").is_err());
    }

    #[test]
    fn locator_finds_nested_values() {
        let l = Locator::new(SRC);
        assert_eq!(
            l.locate(&[PathSeg::Key("items"), PathSeg::Index(1), PathSeg::Key("path")]),
            Some(Location { line: 5, column: 11 })
        );
        assert_eq!(
            l.locate(&[PathSeg::Key("items"), PathSeg::Index(0)]),
            Some(Location { line: 3, column: 5 })
        );
        assert_eq!(
            l.locate(&[PathSeg::Key("name")]),
            Some(Location { line: 1, column: 7 })
        );
        // Missing leaf falls back to the closest ancestor.
        assert_eq!(
            l.locate(&[PathSeg::Key("items"), PathSeg::Index(1), PathSeg::Key("nope")]),
            Some(Location { line: 5, column: 5 })
        );
    }
}
