//! The shape of a config file, checked on its YAML events before serde
//! reads it (as `aliases` does, with `saphyr-parser`):
//! - a key that appears twice in one map is an error naming both lines —
//!   serde would keep the last `upstreams.api` without a word, and a
//!   reviewer reading the first would be wrong about the deployment;
//! - nesting is bounded ([`MAX_DEPTH`]): a few kilobytes of `[[[[…` took
//!   seconds per `check`, reload or admin reload.

use super::error::Problem;
use super::locate::{FieldPath, Position};
use saphyr_parser::{Event, Parser, Span};
use std::collections::HashMap;

/// Deepest nesting a config file may have; real ones stay under ten.
pub const MAX_DEPTH: usize = 64;

/// One open collection.
enum Frame {
    Mapping {
        /// The next node is a key (else a value).
        expect_key: bool,
        /// Scalar keys seen so far, with where each was first.
        keys: HashMap<String, Position>,
        /// The key whose value is being read (for the field path).
        current: Option<String>,
    },
    Sequence {
        /// Index of the next item.
        next: usize,
    },
}

fn position(span: &Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

/// The field path of the node being read, from the open frames.
fn path_of(frames: &[Frame]) -> FieldPath {
    let mut path = FieldPath::root();
    for frame in frames {
        path = match frame {
            Frame::Mapping {
                current: Some(key), ..
            } => path.key(key),
            Frame::Sequence { next } if *next > 0 => path.index(next - 1),
            _ => path,
        };
    }
    path
}

/// Refuses a file with a repeated key in a map or nesting deeper than
/// [`MAX_DEPTH`]. Syntax errors are left to the parser that reports them.
pub fn check_shape(source: &str) -> Result<(), Problem> {
    let mut frames: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(source) {
        let (event, span) = match item {
            Ok(item) => item,
            // The scanner's own bound on flow nesting: the same refusal.
            Err(e) if e.info().contains("recursion limit") => {
                return Err(Problem {
                    path: path_of(&frames),
                    position: Some(Position {
                        line: e.marker().line(),
                        column: e.marker().col() + 1,
                    }),
                    message: format!("nested deeper than {MAX_DEPTH} levels"),
                });
            }
            // Syntax errors are reported by the parser serde uses.
            Err(_) => return Ok(()),
        };
        match event {
            Event::Scalar(value, ..) => {
                node_starts(&mut frames, Some(value.as_ref()), &span)?;
                node_ends(&mut frames);
            }
            Event::Alias(_) => {
                node_starts(&mut frames, None, &span)?;
                node_ends(&mut frames);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                node_starts(&mut frames, None, &span)?;
                if frames.len() >= MAX_DEPTH {
                    return Err(Problem {
                        path: path_of(&frames),
                        position: Some(position(&span)),
                        message: format!("nested deeper than {MAX_DEPTH} levels"),
                    });
                }
                frames.push(match event {
                    Event::MappingStart(..) => Frame::Mapping {
                        expect_key: true,
                        keys: HashMap::new(),
                        current: None,
                    },
                    _ => Frame::Sequence { next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                frames.pop();
                node_ends(&mut frames);
            }
            _ => {}
        }
    }
    Ok(())
}

/// A node starts in the innermost frame: a key is checked against the
/// map's keys, a sequence item advances the index.
fn node_starts(frames: &mut [Frame], scalar: Option<&str>, span: &Span) -> Result<(), Problem> {
    let at = position(span);
    // A key's problem belongs to its map: the path without the map's own
    // (previous) key.
    let path = path_of(&frames[..frames.len().saturating_sub(1)]);
    match frames.last_mut() {
        Some(Frame::Mapping {
            expect_key: true,
            keys,
            current,
        }) => {
            *current = scalar.map(str::to_owned);
            if let Some(key) = scalar {
                if let Some(first) = keys.get(key) {
                    return Err(Problem {
                        path,
                        position: Some(at),
                        message: format!(
                            "key {key:?} appears twice in this map (first at line {})",
                            first.line
                        ),
                    });
                }
                keys.insert(key.to_owned(), at);
            }
        }
        Some(Frame::Sequence { next }) => *next += 1,
        _ => {}
    }
    Ok(())
}

/// A node ended: in a map, a key is followed by its value and a value by
/// the next key.
fn node_ends(frames: &mut [Frame]) {
    if let Some(Frame::Mapping { expect_key, .. }) = frames.last_mut() {
        *expect_key = !*expect_key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused_with_both_lines() {
        let source = "upstreams:\n  api: { backends: [a] }\n  web: {}\n  api: { backends: [b] }\n";
        let p = check_shape(source).expect_err("refused");
        assert_eq!(p.path.to_string(), "upstreams");
        assert_eq!(p.position.map(|x| x.line), Some(4));
        assert!(p.message.contains("first at line 2"), "{}", p.message);
        let flow = "routes:\n  - { name: a, upstream: x, upstream: y }\n";
        let p = check_shape(flow).expect_err("refused");
        assert_eq!(p.path.to_string(), "routes[0]");
    }

    #[test]
    fn equal_values_and_keys_in_different_maps_are_fine() {
        let source = "a: { x: 1, y: 1 }\nb: { x: 1 }\nlist: [x, x]\nc: [{ k: 1 }, { k: 2 }]\n";
        assert!(check_shape(source).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_without_reading_it_all() {
        let deep = format!("x: {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
        let p = check_shape(&deep).expect_err("refused");
        assert!(p.message.contains("deeper than 64"), "{}", p.message);
        let fine = format!("x: {}{}\n", "[".repeat(10), "]".repeat(10));
        assert!(check_shape(&fine).is_ok());
    }
}
