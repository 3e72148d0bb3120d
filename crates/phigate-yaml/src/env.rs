//! `${VAR}` substitution in the scalar values of a parsed document (see
//! [`crate::parse_all_located_env`] for the rules).
//!
//! Substitution works on the tree `serde_yaml_ng` parsed from the original
//! text, never on the text: the structure of the document is fixed before any
//! value is looked at, so a value from the environment cannot add keys, list
//! items or comments, and every position (syntax errors, serde errors, the
//! [`Locator`]) is a position in the original file. `yaml-rust2`'s event
//! parser, walked in step with that tree, tells each scalar's style (plain or
//! quoted) and where it starts, so that a bad reference is reported at the
//! `$` of its `${`.

use std::collections::HashMap;

use serde_yaml_ng::Value;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::{Location, Locator, OwnedSeg, PathSeg};

/// Looks up an environment variable: `None` when it is not set.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What substitution did to a document.
#[derive(Default)]
pub(crate) struct Outcome {
    /// Problems in reading order (of the scalars), each at its position.
    pub errors: Vec<(Option<Location>, String)>,
    /// Scalars with a problem, removed from the value (original paths).
    pub removed: Vec<Vec<OwnedSeg>>,
    /// The document itself is a scalar with a problem: nothing is left.
    pub root_failed: bool,
    /// Substituted scalars, to keep their values out of later messages.
    pub secrets: Secrets,
}

/// Replace the references in every scalar value of `value` (parsed from
/// `src`, where `locator` indexes it).
pub(crate) fn substitute(value: &mut Value, src: &str, env: Env<'_>, locator: &Locator) -> Outcome {
    let tree = Tree::build(src);
    let mut walk = Walk {
        src,
        env,
        locator,
        anchors: tree.as_ref().map(|t| &t.anchors),
        out: Outcome::default(),
    };
    let root = tree.as_ref().and_then(|t| t.root.as_ref());
    let mut path = Vec::new();
    if walk.node(value, root, &mut path) {
        walk.out.root_failed = true;
    }
    walk.out
}

/// What becomes of a scalar.
enum Subst {
    /// No `$` in it.
    Keep,
    Set(Value),
    /// A reference in it is unset or malformed (reported).
    Drop,
}

/// Where a scalar is in the source, and how it is written.
#[derive(Debug, Clone, Copy)]
struct ScalarAt {
    /// Plain (unquoted, not a block scalar) and untagged: its substituted
    /// text is typed as YAML types plain scalars.
    plain: bool,
    marker: Marker,
}

/// The shape of the document as `yaml-rust2` sees it.
#[derive(Debug, Clone)]
enum Node {
    Scalar(ScalarAt),
    Seq(Vec<Node>),
    /// Entries in document order: the key's text (scalar keys) and the value.
    Map(Vec<(Option<String>, Node)>),
    Alias(usize),
}

struct Tree {
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
}

/// Deeper than `serde_yaml_ng` accepts (128): never reached in practice,
/// but it bounds the recursion whatever the input.
const MAX_DEPTH: usize = 1024;

impl Tree {
    /// The first document of `src`; `None` if `yaml-rust2` cannot read it
    /// (substitution then goes on without styles and exact positions).
    fn build(src: &str) -> Option<Self> {
        let mut parser = Parser::new_from_str(src);
        let mut anchors = HashMap::new();
        loop {
            let (event, marker) = parser.next_token().ok()?;
            match event {
                Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
                Event::StreamEnd | Event::DocumentEnd => {
                    return Some(Self { root: None, anchors });
                }
                event => {
                    let root = node(&mut parser, event, marker, &mut anchors, 0);
                    return Some(Self { root, anchors });
                }
            }
        }
    }
}

fn node<T: Iterator<Item = char>>(
    parser: &mut Parser<T>,
    event: Event,
    marker: Marker,
    anchors: &mut HashMap<usize, Node>,
    depth: usize,
) -> Option<Node> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (built, anchor) = match event {
        Event::Scalar(_, style, anchor, tag) => (
            Node::Scalar(ScalarAt {
                plain: style == TScalarStyle::Plain && tag.is_none(),
                marker,
            }),
            anchor,
        ),
        Event::Alias(id) => return Some(Node::Alias(id)),
        Event::SequenceStart(anchor, _) => {
            let mut items = Vec::new();
            loop {
                let (event, marker) = parser.next_token().ok()?;
                if event == Event::SequenceEnd {
                    break;
                }
                items.push(node(parser, event, marker, anchors, depth + 1)?);
            }
            (Node::Seq(items), anchor)
        }
        Event::MappingStart(anchor, _) => {
            let mut entries = Vec::new();
            loop {
                let (event, marker) = parser.next_token().ok()?;
                if event == Event::MappingEnd {
                    break;
                }
                let key = match &event {
                    Event::Scalar(text, ..) => Some(text.clone()),
                    _ => None,
                };
                // Parsed for its anchors and to stay in step; keys are never substituted.
                node(parser, event, marker, anchors, depth + 1)?;
                let (event, marker) = parser.next_token().ok()?;
                entries.push((key, node(parser, event, marker, anchors, depth + 1)?));
            }
            (Node::Map(entries), anchor)
        }
        _ => return None,
    };
    if anchor != 0 {
        anchors.insert(anchor, built.clone());
    }
    Some(built)
}

struct Walk<'a> {
    src: &'a str,
    env: Env<'a>,
    locator: &'a Locator,
    anchors: Option<&'a HashMap<usize, Node>>,
    out: Outcome,
}

impl<'a> Walk<'a> {
    /// Substitute in `value` (at `path`, shaped like `node` when known);
    /// true when `value` itself must be removed.
    fn node(&mut self, value: &mut Value, node: Option<&'a Node>, path: &mut Vec<OwnedSeg>) -> bool {
        let node = match node {
            Some(Node::Alias(id)) => self.anchors.and_then(|a| a.get(id)),
            other => other,
        };
        match value {
            Value::Mapping(map) => {
                let entries = match node {
                    Some(Node::Map(entries)) if entries.len() == map.len() => Some(entries),
                    _ => None,
                };
                let mut drop = Vec::with_capacity(map.len());
                for (i, (key, child)) in map.iter_mut().enumerate() {
                    let known = entries.and_then(|e| e.get(i));
                    // Both parsers agree on the document; checked anyway.
                    let (name, child_node) = match (known, key) {
                        (Some((Some(k), n)), Value::String(s)) if k == s => (k.clone(), Some(n)),
                        (Some((Some(k), _)), Value::String(_)) => (k.clone(), None),
                        (Some((Some(k), n)), _) => (k.clone(), Some(n)),
                        (Some((None, n)), key) => (key_text(key), Some(n)),
                        (None, key) => (key_text(key), None),
                    };
                    path.push(OwnedSeg::Key(name));
                    let gone = self.node(child, child_node, path);
                    if gone {
                        self.out.removed.push(path.clone());
                    }
                    path.pop();
                    drop.push(gone);
                }
                let mut i = 0;
                map.retain(|_, _| {
                    let keep = !drop.get(i).copied().unwrap_or(false);
                    i += 1;
                    keep
                });
                false
            }
            Value::Sequence(items) => {
                let nodes = match node {
                    Some(Node::Seq(nodes)) if nodes.len() == items.len() => Some(nodes),
                    _ => None,
                };
                let mut drop = Vec::new();
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(OwnedSeg::Index(i));
                    if self.node(item, nodes.and_then(|n| n.get(i)), path) {
                        drop.push(i);
                        self.out.removed.push(path.clone());
                    }
                    path.pop();
                }
                for i in drop.into_iter().rev() {
                    items.remove(i);
                }
                false
            }
            Value::Tagged(tagged) => {
                // An explicit tag fixes the type: the text is never re-typed.
                let at = match node {
                    Some(Node::Scalar(at)) => Some(ScalarAt { plain: false, ..*at }),
                    _ => None,
                };
                match &tagged.value {
                    Value::String(text) => match self.scalar(text, at, path) {
                        Subst::Keep => false,
                        Subst::Set(new) => {
                            tagged.value = new;
                            false
                        }
                        Subst::Drop => true,
                    },
                    _ => false,
                }
            }
            Value::String(text) => {
                let at = match node {
                    Some(Node::Scalar(at)) => Some(*at),
                    _ => None,
                };
                match self.scalar(text, at, path) {
                    Subst::Keep => false,
                    Subst::Set(new) => {
                        *value = new;
                        false
                    }
                    Subst::Drop => true,
                }
            }
            // Numbers, booleans and null are written without `$`.
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// What becomes of one scalar: its problems are reported here.
    fn scalar(&mut self, text: &str, at: Option<ScalarAt>, path: &[OwnedSeg]) -> Subst {
        if !text.contains('$') {
            return Subst::Keep;
        }
        let template = Template::parse(text);
        let mut problems = template.errors;
        let mut out = String::with_capacity(text.len());
        let mut names: Vec<&str> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for piece in &template.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var {
                    name,
                    default,
                    dollar,
                } => {
                    if !names.contains(name) {
                        names.push(name);
                    }
                    match ((self.env)(name), default) {
                        (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                        (Some(v), _) => {
                            out.push_str(&v);
                            values.push(v);
                        }
                        (None, Some(d)) => out.push_str(d),
                        (None, None) => problems.push((
                            *dollar,
                            format!(
                                "environment variable `{name}` is not set (use ${{{name}:-default}} for a default)"
                            ),
                        )),
                    }
                }
            }
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.0);
            for (dollar, message) in problems {
                let location = at
                    .and_then(|at| dollar_location(self.src, at.marker, dollar))
                    .or_else(|| self.locate(path));
                if !self.out.errors.contains(&(location, message.clone())) {
                    self.out.errors.push((location, message));
                }
            }
            return Subst::Drop;
        }
        let whole = matches!(template.pieces.as_slice(), [Piece::Var { .. }]);
        let value = if whole && at.is_some_and(|at| at.plain) {
            resolve_plain(&out)
        } else {
            Value::String(out)
        };
        if !names.is_empty() {
            let refs: Vec<String> = names.iter().map(|n| format!("${{{n}}}")).collect();
            self.out
                .secrets
                .push(path.to_vec(), &refs.join(", "), &value, values);
        }
        Subst::Set(value)
    }

    fn locate(&self, path: &[OwnedSeg]) -> Option<Location> {
        let at: Vec<PathSeg<'_>> = path
            .iter()
            .map(|s| match s {
                OwnedSeg::Key(k) => PathSeg::Key(k),
                OwnedSeg::Index(i) => PathSeg::Index(*i),
            })
            .collect();
        self.locator.locate(&at)
    }
}

/// The path text of a mapping key `yaml-rust2` could not name.
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "~".to_string(),
        _ => String::new(),
    }
}

/// The position of the `dollar`-th `$` (0-based) of the scalar starting at
/// `marker`: the `$` of the reference with that many `$` before it in the
/// scalar's value, since YAML quoting and folding neither add nor remove `$`.
fn dollar_location(src: &str, marker: Marker, dollar: usize) -> Option<Location> {
    let start = match src.char_indices().nth(marker.index()) {
        Some((byte, _)) => byte,
        None => return None,
    };
    let (mut line, mut col) = (marker.line(), marker.col());
    let mut seen = 0;
    for c in src.get(start..)?.chars() {
        if c == '$' {
            if seen == dollar {
                return Some(Location {
                    line,
                    column: col + 1,
                });
            }
            seen += 1;
        }
        if c == '\n' {
            line += 1;
            col = 0;
        } else {
            col += 1;
        }
    }
    None
}

/// The type YAML gives `text` written as a plain scalar: null, a boolean or
/// a number when it is one (YAML 1.2 core schema, as `serde_yaml_ng` reads
/// it), else a string. Empty text is null, as an empty value is.
fn resolve_plain(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    // Only these characters can spell a null, boolean or number; anything
    // else (spaces, `#`, `:`, quotes, brackets, line breaks) stays text
    // without ever being parsed as YAML.
    let safe = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '~'));
    if safe {
        if let Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_))) =
            serde_yaml_ng::from_str::<Value>(text)
        {
            return v;
        }
    }
    Value::String(text.to_string())
}

/// A scalar's text split into literal text and references.
struct Template<'t> {
    pieces: Vec<Piece<'t>>,
    /// Malformed references: (`$` ordinal, message).
    errors: Vec<(usize, String)>,
}

enum Piece<'t> {
    Text(&'t str),
    Var {
        name: &'t str,
        default: Option<&'t str>,
        /// How many `$` come before this reference's `$` in the scalar.
        dollar: usize,
    },
}

impl<'t> Template<'t> {
    fn parse(text: &'t str) -> Self {
        let mut pieces = Vec::new();
        let mut errors = Vec::new();
        let mut dollars = 0;
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            if i > 0 {
                pieces.push(Piece::Text(&rest[..i]));
            }
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                // `$$`: one literal `$`.
                pieces.push(Piece::Text("$"));
                dollars += 2;
                rest = tail;
            } else if let Some(body_and_tail) = after.strip_prefix('{') {
                let dollar = dollars;
                dollars += 1;
                let Some(end) = body_and_tail.find('}') else {
                    errors.push((
                        dollar,
                        "unclosed `${` (a reference is ${VAR} or ${VAR:-default}; write $$ for a literal $)"
                            .to_string(),
                    ));
                    return Self { pieces, errors };
                };
                let body = &body_and_tail[..end];
                dollars += body.matches('$').count();
                rest = &body_and_tail[end + 1..];
                match reference(body) {
                    Ok((name, default)) => pieces.push(Piece::Var {
                        name,
                        default,
                        dollar,
                    }),
                    Err(why) => errors.push((
                        dollar,
                        format!(
                            "invalid environment variable reference `${{{}}}`: {why}",
                            shorten(body)
                        ),
                    )),
                }
            } else {
                // A lone `$` is itself.
                pieces.push(Piece::Text("$"));
                dollars += 1;
                rest = after;
            }
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest));
        }
        Self { pieces, errors }
    }
}

/// `NAME` or `NAME:-default` (the text between `${` and `}`).
fn reference(body: &str) -> Result<(&str, Option<&str>), &'static str> {
    let len = body
        .char_indices()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(body.len(), |(i, _)| i);
    let (name, rest) = body.split_at(len);
    if name.is_empty() {
        return Err("a variable name is a letter or `_` followed by letters, digits or `_`");
    }
    if rest.is_empty() {
        return Ok((name, None));
    }
    match rest.strip_prefix(":-") {
        Some(default) if default.contains("${") => Err("references cannot be nested"),
        Some(default) => Ok((name, Some(default))),
        None => Err("only ${VAR} and ${VAR:-default} are supported"),
    }
}

/// Reference text quoted in a message, cut short.
fn shorten(body: &str) -> String {
    const MAX: usize = 40;
    match body.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_string(),
    }
}

/// Substituted scalars: messages about them name the reference instead of
/// showing the value, which may be a secret.
#[derive(Default)]
pub(crate) struct Secrets {
    items: Vec<Secret>,
}

struct Secret {
    path: Vec<OwnedSeg>,
    /// `(value from ${A}, ${B})`
    label: String,
    /// How messages quote the value (`"…"`, `` `…` ``), replaced by the label.
    quoted: Vec<String>,
    /// The value and the variables' values: a message still containing one
    /// of them is replaced by a generic one.
    plain: Vec<String>,
}

impl Secrets {
    fn push(&mut self, path: Vec<OwnedSeg>, refs: &str, value: &Value, env_values: Vec<String>) {
        let mut quoted = Vec::new();
        let mut plain = env_values;
        let mut add = |text: String| {
            quoted.push(format!("{text:?}"));
            quoted.push(format!("`{text}`"));
            plain.push(text);
        };
        match value {
            Value::String(s) => add(s.clone()),
            Value::Bool(b) => add(b.to_string()),
            Value::Number(n) => {
                add(n.to_string());
                if let Some(f) = n.as_f64() {
                    add(format!("{f:?}"));
                    add(f.to_string());
                }
            }
            _ => {}
        }
        plain.retain(|p| !p.is_empty());
        // Longest first, so a value is replaced before any part of it.
        quoted.sort_by_key(|q| std::cmp::Reverse(q.len()));
        quoted.dedup();
        self.items.push(Secret {
            path,
            label: format!("(value from {refs})"),
            quoted,
            plain,
        });
    }

    /// `message` (a serde error at `at`, an original path) without the
    /// values of the substituted scalars at, above or below `at`.
    pub(crate) fn scrub(&self, at: &[OwnedSeg], message: String) -> String {
        // About keys, which are never substituted.
        if self.items.is_empty()
            || message.starts_with("unknown field `")
            || message.starts_with("missing field `")
            || message.starts_with("duplicate")
        {
            return message;
        }
        let below = |s: &&Secret| s.path.starts_with(at);
        let mut related: Vec<&Secret> = self
            .items
            .iter()
            .filter(|s| s.path.starts_with(at) || at.starts_with(&s.path))
            .collect();
        // The scalar the message is about first, then those below, then above.
        related.sort_by_key(|s| (s.path.len() != at.len(), !below(s)));
        // Labels go in last (as placeholders until then), so that their text
        // is not mistaken for a value.
        let placeholder = |i: usize| format!("\u{1}{}\u{1}", "\u{2}".repeat(i + 1));
        let mut scrubbed = message;
        for (i, s) in related.iter().enumerate() {
            for q in &s.quoted {
                scrubbed = scrubbed.replace(q.as_str(), &placeholder(i));
            }
        }
        let leaks = |text: &str, s: &Secret| s.plain.iter().any(|p| contains_word(text, p));
        if let Some(i) = related.iter().position(|s| below(s) && leaks(&scrubbed, s)) {
            let tail = scrubbed
                .find(", expected ")
                .map(|j| scrubbed[j..].to_string())
                .filter(|tail| !related.iter().any(|s| leaks(tail, s)))
                .unwrap_or_default();
            scrubbed = format!("invalid value {}{tail}", placeholder(i));
        }
        for (i, s) in related.iter().enumerate().rev() {
            scrubbed = scrubbed.replace(&placeholder(i), &s.label);
        }
        scrubbed
    }
}

/// `needle` occurs in `hay` not as part of a longer word.
fn contains_word(hay: &str, needle: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let starts_word = needle.chars().next().is_some_and(word);
    let ends_word = needle.chars().next_back().is_some_and(word);
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        let glued_before = starts_word && before.is_some_and(word);
        let glued_after = ends_word && after.is_some_and(word);
        !glued_before && !glued_after
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;
    use serde_yaml_ng::Value;

    use crate::{parse_all_located, parse_all_located_env, Diagnostic, Location, PathSeg};

    /// The test environment: everything else is unset.
    fn env(name: &str) -> Option<String> {
        let value = match name {
            "PORT" => "8080",
            "BIG" => "70000",
            "HOST" => "example.com",
            "EMPTY" => "",
            "FLAG" => "true",
            "RATIO" => "1.5",
            "HEX" => "0x1F",
            "TILDE" => "~",
            "YES" => "yes",
            "ZERO_PADDED" => "012",
            "WORDS" => "not a number",
            "INJECT" => "a: b\n- c # d",
            "QUOTES" => "\"x' {y} [z], *w &v !t |",
            "SECRET" => "hunter2-s3cr3t",
            "LONG" => "a-value-much-longer-than-its-reference",
            _ => return None,
        };
        Some(value.to_string())
    }

    fn yaml(text: &str) -> Value {
        match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("bad test YAML {text:?}: {e}"),
        }
    }

    fn run<T: serde::de::DeserializeOwned>(src: &str) -> (Option<T>, Vec<Diagnostic>, crate::Locator) {
        parse_all_located_env::<T>("c.yaml", src, &env)
    }

    fn shown(errors: &[Diagnostic]) -> Vec<String> {
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn substituted_values() {
        // (source, the document it must read as)
        let cases: &[(&str, &str)] = &[
            // plain, exactly one reference: typed as if written there
            ("a: ${PORT}", "a: 8080"),
            ("a: ${FLAG}", "a: true"),
            ("a: ${RATIO}", "a: 1.5"),
            ("a: ${HEX}", "a: 0x1F"),
            ("a: ${TILDE}", "a: ~"),
            ("a: ${YES}", "a: 'yes'"),
            ("a: ${ZERO_PADDED}", "a: '012'"),
            ("a: ${WORDS}", "a: not a number"),
            ("a: ${HOST}", "a: example.com"),
            // quoted: always a string
            ("a: \"${PORT}\"", "a: '8080'"),
            ("a: '${FLAG}'", "a: 'true'"),
            ("a: \"${EMPTY}\"", "a: ''"),
            // mixed text: always a string
            ("a: https://${HOST}:${PORT}/x", "a: 'https://example.com:8080/x'"),
            ("a: \"https://${HOST}/x\"", "a: https://example.com/x"),
            ("a: /etc/${HOST}/cert.pem", "a: /etc/example.com/cert.pem"),
            ("a: ${PORT}${PORT}", "a: '80808080'"),
            ("a: ${PORT} ", "a: 8080"),
            // defaults: unset or empty
            ("a: ${UNSET:-fallback}", "a: fallback"),
            ("a: ${UNSET:-false}", "a: false"),
            ("a: ${UNSET:-30s}", "a: 30s"),
            ("a: ${UNSET:-}", "a: null"),
            ("a: \"${UNSET:-}\"", "a: ''"),
            ("a: \"${UNSET:-a b: c}\"", "a: 'a b: c'"),
            ("a: \"${UNSET:-x, y}\"", "a: 'x, y'"),
            ("a: ${EMPTY:-d}", "a: d"),
            ("a: ${EMPTY}", "a: null"),
            ("a: ${PORT:-1}", "a: 8080"),
            ("a: \"${UNSET:-$x}\"", "a: $x"),
            // `$$` and lone `$`
            ("a: $$5", "a: $5"),
            ("a: $${PORT}", "a: '${PORT}'"),
            ("a: $$${PORT}", "a: $8080"),
            ("a: cost $5 $", "a: cost $5 $"),
            ("a: \"$\"", "a: $"),
            ("a: x$$$$y", "a: x$$y"),
            // no injection: the value is one scalar, whatever it holds
            ("a: ${INJECT}\nb: 1", "a: \"a: b\\n- c # d\"\nb: 1"),
            ("a: \"${INJECT}\"", "a: \"a: b\\n- c # d\""),
            (
                "- ${INJECT}\n- ${QUOTES}",
                "- \"a: b\\n- c # d\"\n- \"\\\"x' {y} [z], *w &v !t |\"",
            ),
            (
                "a: [\"${INJECT}\", '${QUOTES}']",
                "a: [\"a: b\\n- c # d\", \"\\\"x' {y} [z], *w &v !t |\"]",
            ),
            ("a: {k: \"${INJECT}\", l: x}", "a: {k: \"a: b\\n- c # d\", l: x}"),
            ("a: pre ${INJECT}", "a: \"pre a: b\\n- c # d\""),
            // keys and comments are left alone
            ("${PORT}: ${PORT}", "'${PORT}': 8080"),
            ("a: 1 # ${NOT_SUBSTITUTED} ${1bad\n# ${UNSET}\nb: 2", "a: 1\nb: 2"),
            ("{\"${HOST}\": \"${HOST}\"}", "{'${HOST}': example.com}"),
            // every kind of scalar, everywhere
            ("a: |\n  x ${HOST}\n  y\n", "a: \"x example.com\\ny\\n\""),
            ("a: >-\n  x\n  ${PORT}\n", "a: x 8080"),
            ("a: one\n  ${HOST}", "a: one example.com"),
            ("a: \"one\n  ${HOST}\"", "a: one example.com"),
            (
                "a:\n  - ${PORT}\n  - b: [\"${FLAG}\", x]\n    c: {d: \"${HOST}\"}",
                "a:\n  - 8080\n  - b: ['true', x]\n    c: {d: example.com}",
            ),
            ("a: &x ${HOST}\nb: *x", "a: example.com\nb: example.com"),
            ("a: !!str ${PORT}", "a: '8080'"),
            ("${PORT}", "8080"),
            ("1: ${PORT}\ntrue: [\"${UNSET:-x}\"]", "1: 8080\ntrue: [x]"),
        ];
        for (src, want) in cases {
            let (got, errors, _) = run::<Value>(src);
            assert!(errors.is_empty(), "{src:?}: {:?}", shown(&errors));
            assert_eq!(got, Some(yaml(want)), "{src:?}");
        }
    }

    #[test]
    fn bad_references_are_reported_where_they_are() {
        // (source, every diagnostic in order)
        let cases: &[(&str, &[&str])] = &[
            (
                "a: ${UNSET_A}\nb:\n  - x\n  - \"pre ${UNSET_B} ${UNSET_C:-ok} ${UNSET_D}\"\n",
                &[
                    "c.yaml:1:4: environment variable `UNSET_A` is not set (use ${UNSET_A:-default} for a default)",
                    "c.yaml:4:10: environment variable `UNSET_B` is not set (use ${UNSET_B:-default} for a default)",
                    "c.yaml:4:36: environment variable `UNSET_D` is not set (use ${UNSET_D:-default} for a default)",
                ],
            ),
            (
                "a: x ${1abc} $$ ${VAR:?x}\nb: ${}\nc: ${A-b}\n",
                &[
                    "c.yaml:1:6: invalid environment variable reference `${1abc}`: a variable name is a letter or `_` followed by letters, digits or `_`",
                    "c.yaml:1:17: invalid environment variable reference `${VAR:?x}`: only ${VAR} and ${VAR:-default} are supported",
                    "c.yaml:2:4: invalid environment variable reference `${}`: a variable name is a letter or `_` followed by letters, digits or `_`",
                    "c.yaml:3:4: invalid environment variable reference `${A-b}`: only ${VAR} and ${VAR:-default} are supported",
                ],
            ),
            (
                "a: \"${PORT}${UNCLOSED\"\nb: ${A:-${B}}\n",
                &[
                    "c.yaml:1:12: unclosed `${` (a reference is ${VAR} or ${VAR:-default}; write $$ for a literal $)",
                    "c.yaml:2:4: invalid environment variable reference `${A:-${B}`: references cannot be nested",
                ],
            ),
            // On later lines of multi-line scalars; `$` in quoting and comments do not count.
            (
                "a: 'it''s $$'  # ${X}\nb: \"x\n  $ ${UNSET_E}\"\nc: |\n  $$\n    ${UNSET_F}\nd: plain\n  more ${UNSET_G}\n",
                &[
                    "c.yaml:3:5: environment variable `UNSET_E` is not set (use ${UNSET_E:-default} for a default)",
                    "c.yaml:6:5: environment variable `UNSET_F` is not set (use ${UNSET_F:-default} for a default)",
                    "c.yaml:8:8: environment variable `UNSET_G` is not set (use ${UNSET_G:-default} for a default)",
                ],
            ),
            // An aliased scalar is reported once, at its anchor.
            (
                "a: &x ${UNSET}\nb: *x\n",
                &["c.yaml:1:7: environment variable `UNSET` is not set (use ${UNSET:-default} for a default)"],
            ),
            // The document itself.
            (
                "${UNSET}",
                &["c.yaml:1:1: environment variable `UNSET` is not set (use ${UNSET:-default} for a default)"],
            ),
        ];
        for (src, want) in cases {
            let (_, errors, _) = run::<Value>(src);
            assert_eq!(shown(&errors), *want, "{src:?}");
        }
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        h2c: Option<bool>,
        #[serde(default, with = "humantime_serde")]
        grace: Option<Duration>,
        #[serde(default)]
        timeout: Option<String>,
        #[serde(default)]
        threads: Option<u32>,
        #[serde(default)]
        ratio: Option<f64>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        sub: Option<Sub>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sub {
        x: String,
        #[serde(default)]
        y: Option<String>,
        #[serde(default)]
        port: Option<u16>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Safe,
    }

    #[test]
    fn typed_fields() {
        let src = "name: ${HOST}\nport: ${PORT}\nh2c: ${UNSET:-true}\ngrace: ${UNSET:-30s}\ntimeout: ${UNSET:-30s}\nthreads: ${UNSET:-4}\nratio: ${RATIO}\ntags: [\"${PORT}\", \"${FLAG}\", x]\nmode: ${UNSET:-safe}\nsub: {x: \"${INJECT}\"}\n";
        let (got, errors, _) = run::<Conf>(src);
        assert!(errors.is_empty(), "{:?}", shown(&errors));
        let want = Conf {
            name: Some("example.com".into()),
            port: Some(8080),
            h2c: Some(true),
            grace: Some(Duration::from_secs(30)),
            timeout: Some("30s".into()),
            threads: Some(4),
            ratio: Some(1.5),
            tags: vec!["8080".into(), "true".into(), "x".into()],
            mode: Some(Mode::Safe),
            sub: Some(Sub {
                x: "a: b\n- c # d".into(),
                y: None,
                port: None,
            }),
        };
        assert_eq!(got, Some(want));
    }

    #[test]
    fn errors_about_values_name_the_reference_not_the_value() {
        // (source, every diagnostic in order)
        let cases: &[(&str, &[&str])] = &[
            ("port: ${HOST}", &["c.yaml:1:7: invalid type: string (value from ${HOST}), expected u16"]),
            ("port: ${BIG}", &["c.yaml:1:7: invalid value: integer (value from ${BIG}), expected u16"]),
            ("port: \"${PORT}\"", &["c.yaml:1:7: invalid type: string (value from ${PORT}), expected u16"]),
            ("name: ${PORT}", &["c.yaml:1:7: invalid type: integer (value from ${PORT}), expected a string"]),
            ("h2c: ${SECRET}", &["c.yaml:1:6: invalid type: string (value from ${SECRET}), expected a boolean"]),
            (
                "port: ${HOST}:${SECRET}",
                &["c.yaml:1:7: invalid type: string (value from ${HOST}, ${SECRET}), expected u16"],
            ),
            ("mode: ${SECRET}", &["c.yaml:1:7: unknown variant (value from ${SECRET}), expected `fast` or `safe`"]),
            ("sub: {x: a, port: \"${WORDS}\"}", &["c.yaml:1:19: invalid type: string (value from ${WORDS}), expected u16"]),
            ("tags: ${SECRET}", &["c.yaml:1:7: invalid type: string (value from ${SECRET}), expected a sequence"]),
            ("tags: [${UNSET:-x}]", &["c.yaml:1:9: did not find expected ',' or ']' (inside [ ] or { }, quote an environment variable reference: \"${VAR}\")"]),
        ];
        for (src, want) in cases {
            let (_, errors, _) = run::<Conf>(src);
            assert_eq!(shown(&errors), *want, "{src:?}");
        }
        // Whatever serde (or a custom deserialiser) says, the value is not in it.
        for src in [
            "grace: ${SECRET}",
            "grace: \"${LONG}\"",
            "grace: x${SECRET}",
            "sub:\n  x: ${SECRET}\n  port: ${SECRET}",
            "sub: ${SECRET}",
            "threads: ${SECRET}",
            "ratio: ${LONG}",
        ] {
            let (_, errors, _) = run::<Conf>(src);
            assert_eq!(errors.len(), 1, "{src}: {:?}", shown(&errors));
            for e in &errors {
                let e = e.to_string();
                assert!(!e.contains("hunter2") && !e.contains("much-longer"), "{src}: {e}");
                assert!(e.contains("(value from ${"), "{src}: {e}");
            }
        }
    }

    /// Deserialises from a string, and says the string in its errors.
    #[derive(Debug)]
    struct Echo;

    impl<'de> Deserialize<'de> for Echo {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            Err(serde::de::Error::custom(format!(
                "cannot use {s} here, expected a thing"
            )))
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Echoes {
        #[serde(default)]
        one: Option<Echo>,
        #[serde(default)]
        two: Option<Echo>,
        #[serde(default)]
        three: Option<Echo>,
    }

    #[test]
    fn a_message_that_would_still_show_the_value_is_replaced() {
        let (_, errors, _) = run::<Echoes>("one: ${SECRET}\ntwo: \"x ${SECRET} y\"\nthree: plain text\n");
        assert_eq!(
            shown(&errors),
            [
                "c.yaml:1:6: invalid value (value from ${SECRET}), expected a thing",
                "c.yaml:2:6: invalid value (value from ${SECRET}), expected a thing",
                // Not substituted: nothing to hide.
                "c.yaml:3:8: cannot use plain text here, expected a thing",
            ]
        );
    }

    #[test]
    fn positions_are_those_of_the_file_as_written() {
        // Substitutions earlier on the same line and on earlier lines change
        // lengths (longer and shorter); the errors after them do not move.
        let src = "name: ${LONG}-${LONG}\nsub: {x: \"${LONG}\", y: \"${EMPTY:-}\", port: nope}\nthreads: ${PORT}\nratio: \"${PORT}\"   \nbogus: ${LONG}\nh2c: maybe\n";
        let (got, errors, locator) = run::<Conf>(src);
        assert_eq!(
            shown(&errors),
            [
                "c.yaml:2:44: invalid type: string \"nope\", expected u16",
                "c.yaml:4:8: invalid type: string (value from ${PORT}), expected f64",
                "c.yaml:5:8: unknown field `bogus`, expected one of `name`, `port`, `h2c`, `grace`, `timeout`, `threads`, `ratio`, `tags`, `sub`, `mode`",
                "c.yaml:6:6: invalid type: string \"maybe\", expected a boolean",
            ]
        );
        let got = got.unwrap_or_default();
        assert_eq!(got.threads, Some(8080));
        // The caller's own errors are located in the original text too.
        let at = |path: &[PathSeg<'_>]| locator.locate(path);
        assert_eq!(
            at(&[PathSeg::Key("sub"), PathSeg::Key("y")]),
            Some(Location { line: 2, column: 24 })
        );
        assert_eq!(
            at(&[PathSeg::Key("threads")]),
            Some(Location { line: 3, column: 10 })
        );

        // Removed items (unset variables) do not shift later ones.
        let src = "tags:\n  - ${UNSET}\n  - ${HOST}\n  - ${PORT}x\nport: ${PORT}\n";
        let (got, errors, locator) = run::<Conf>(src);
        assert_eq!(
            shown(&errors),
            ["c.yaml:2:5: environment variable `UNSET` is not set (use ${UNSET:-default} for a default)"]
        );
        let got = got.unwrap_or_default();
        assert_eq!(got.tags, ["example.com", "8080x"]);
        assert_eq!(
            locator.locate(&[PathSeg::Key("tags"), PathSeg::Index(1)]),
            Some(Location { line: 4, column: 5 })
        );
    }

    #[test]
    fn every_problem_is_reported_in_one_run() {
        let src =
            "port: ${UNSET_P}\nbogus: 1\nh2c: ${UNSET_F}\nthreads: many\nsub:\n  x: ${UNSET_X}\ntags: [a]\n";
        let (got, errors, _) = run::<Conf>(src);
        assert_eq!(
            shown(&errors),
            [
                "c.yaml:1:7: environment variable `UNSET_P` is not set (use ${UNSET_P:-default} for a default)",
                "c.yaml:2:8: unknown field `bogus`, expected one of `name`, `port`, `h2c`, `grace`, `timeout`, `threads`, `ratio`, `tags`, `sub`, `mode`",
                "c.yaml:3:6: environment variable `UNSET_F` is not set (use ${UNSET_F:-default} for a default)",
                "c.yaml:4:10: invalid type: string \"many\", expected u32",
                "c.yaml:6:6: environment variable `UNSET_X` is not set (use ${UNSET_X:-default} for a default)",
            ]
        );
        // `sub` needed the removed `x`: it goes (silently), the rest stays.
        let got = got.unwrap_or_default();
        assert_eq!((got.sub, got.tags), (None, vec!["a".to_string()]));
    }

    #[test]
    fn the_plain_loader_does_not_substitute() {
        let (got, errors, _) = parse_all_located::<Value>("c.yaml", "a: ${PORT}\nb: $$\n");
        assert!(errors.is_empty());
        assert_eq!(got, Some(yaml("a: ${PORT}\nb: $$")));
    }

    #[test]
    fn takes_the_process_environment() {
        let (got, errors, _) =
            parse_all_located_env::<Value>("c.yaml", "a: ${PHIGATE_YAML_TEST_SURELY_UNSET:-1}", &|k| {
                std::env::var(k).ok()
            });
        assert!(errors.is_empty());
        assert_eq!(got, Some(yaml("a: 1")));
    }
}
