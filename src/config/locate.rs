//! Finds the line and column of a field path (`routes[2].upstream`) in the
//! YAML source, so that errors found *after* parsing (a route naming an
//! unknown upstream, a duplicate name) still point at file:line.
//!
//! serde_yaml reports positions only for errors raised while deserializing,
//! and exposes no spans, so this walks the event stream of a second, spanned
//! parser (`saphyr-parser`). Only called on the error path.

use saphyr_parser::{Event, Parser};
use std::fmt;

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key in a mapping (`routes`, `upstream`).
    Key(String),
    /// A position in a sequence (`[2]`).
    Index(usize),
}

/// A field path such as `routes[2].timeouts.total`, as printed in errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Segment>);

impl FieldPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(key.to_owned()));
        Self(v)
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Index(index));
        Self(v)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where a node is in the source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number.
    pub column: usize,
}

enum Frame {
    Map {
        key: Option<String>,
        awaiting_key: bool,
    },
    Seq {
        index: usize,
    },
}

impl Frame {
    fn matches(&self, seg: &Segment) -> bool {
        match (self, seg) {
            (Frame::Map { key: Some(k), .. }, Segment::Key(want)) => k == want,
            (Frame::Seq { index }, Segment::Index(want)) => index == want,
            _ => false,
        }
    }
}

fn at(stack: &[Frame], target: &[Segment]) -> bool {
    stack.len() == target.len() && stack.iter().zip(target).all(|(f, s)| f.matches(s))
}

/// After a complete value, the enclosing collection moves on.
fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { awaiting_key, .. }) => *awaiting_key = true,
        Some(Frame::Seq { index }) => *index += 1,
        None => {}
    }
}

/// Returns the position of the node at `path`: for a mapping entry, the
/// position of its key; for a sequence item, the item itself. `None` when the
/// path does not exist in the source (e.g. a defaulted field).
pub fn locate(source: &str, path: &FieldPath) -> Option<Position> {
    let target = &path.0[..];
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(source) {
        let (event, span) = item.ok()?;
        let pos = Position {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key, awaiting_key }) = stack.last_mut() {
                    if *awaiting_key {
                        *key = Some(value.into_owned());
                        *awaiting_key = false;
                        if at(&stack, target) {
                            return Some(pos);
                        }
                        continue;
                    }
                }
                if at(&stack, target) {
                    return Some(pos);
                }
                advance(&mut stack);
            }
            Event::Alias(_) => {
                if at(&stack, target) {
                    return Some(pos);
                }
                advance(&mut stack);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if matches!(
                    stack.last(),
                    Some(Frame::Map {
                        awaiting_key: true,
                        ..
                    })
                ) {
                    // A complex (non-scalar) key: not something our config uses.
                    return None;
                }
                if at(&stack, target) {
                    return Some(pos);
                }
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map {
                        key: None,
                        awaiting_key: true,
                    }
                } else {
                    Frame::Seq { index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                advance(&mut stack);
            }
            _ => {}
        }
    }
    None
}

/// Whether the source is syntactically valid YAML.
pub fn well_formed(source: &str) -> bool {
    Parser::new_from_str(source).all(|item| item.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
listen: [\"127.0.0.1:8080\"]
upstreams:
  api:
    backends:
      - 127.0.0.1:9000
      - { address: 127.0.0.1:9001, weight: 2 }
routes:
  - name: a
    upstream: api
  - name: b
    match:
      path_prefix: /b/
    upstream: nope
";

    fn path(parts: &[&str]) -> FieldPath {
        let mut p = FieldPath::root();
        for part in parts {
            p = match part.parse::<usize>() {
                Ok(n) => p.index(n),
                Err(_) => p.key(part),
            };
        }
        p
    }

    #[test]
    fn finds_keys_in_nested_block_mappings() {
        let pos = locate(SRC, &path(&["routes", "1", "upstream"])).expect("found");
        assert_eq!((pos.line, pos.column), (13, 5));
        let pos = locate(SRC, &path(&["routes", "1", "match", "path_prefix"])).expect("found");
        assert_eq!(pos.line, 12);
    }

    #[test]
    fn finds_items_in_flow_and_block_sequences() {
        assert_eq!(
            locate(SRC, &path(&["listen", "0"])).map(|p| p.line),
            Some(1)
        );
        assert_eq!(
            locate(SRC, &path(&["upstreams", "api", "backends", "1", "weight"])).map(|p| p.line),
            Some(6)
        );
        assert_eq!(
            locate(SRC, &path(&["routes", "1"])).map(|p| p.line),
            Some(10)
        );
    }

    #[test]
    fn missing_paths_are_not_found() {
        assert_eq!(locate(SRC, &path(&["routes", "7"])), None);
        assert_eq!(locate(SRC, &path(&["admin"])), None);
    }

    #[test]
    fn paths_print_like_field_accessors() {
        assert_eq!(
            path(&["routes", "2", "timeouts", "total"]).to_string(),
            "routes[2].timeouts.total"
        );
    }
}
