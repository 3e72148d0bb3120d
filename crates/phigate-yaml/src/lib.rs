//! The one place in phigate that knows which YAML library is in use.
//!
//! `serde_yaml` is deprecated upstream; we use the maintained drop-in fork
//! `serde_yaml_ng` for typed deserialisation and `yaml-rust2`'s event parser to
//! find where a value sits in the source, so that every configuration error can
//! be reported as `file:line:column: message`. Swapping the YAML library means
//! editing this crate only.
#![forbid(unsafe_code)]

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
        Self { nodes }
    }

    /// The position of the node at `path`, or of its closest existing ancestor.
    pub fn locate(&self, path: &[PathSeg<'_>]) -> Option<Location> {
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
