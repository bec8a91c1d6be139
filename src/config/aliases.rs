//! A bound on what YAML aliases expand to. A few kilobytes of nested
//! anchors and aliases ("billion laughs") expand to gigabytes when
//! deserialized; serde_yaml only bounds the number of alias jumps relative
//! to the document, which still allows quadratic growth. This walks the
//! event stream once (with `saphyr-parser`, as `locate` does) and adds up
//! the nodes each alias stands for, refusing the file before anything is
//! expanded.

use super::error::Problem;
use super::locate::{FieldPath, Position};
use saphyr_parser::{Event, Parser};
use std::collections::HashMap;

/// Most nodes a config file may stand for once its aliases are expanded:
/// far above any real deployment (100 000 tenants with a few keys each is
/// about a million), far below what hurts.
pub const MAX_EXPANDED_NODES: u64 = 10_000_000;

/// Refuses a file whose aliases expand past [`MAX_EXPANDED_NODES`], at the
/// alias where the total crossed it. Syntax errors are left to the parser
/// that reports them properly.
pub fn check_expansion(source: &str) -> Result<(), Problem> {
    let mut total: u64 = 0;
    let mut sizes: HashMap<usize, u64> = HashMap::new();
    let mut open: Vec<(usize, u64)> = Vec::new();
    for item in Parser::new_from_str(source) {
        let Ok((event, span)) = item else {
            return Ok(());
        };
        match event {
            Event::Scalar(_, _, anchor, _) => {
                total += 1;
                if anchor > 0 {
                    sizes.insert(anchor, 1);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, total));
                total += 1;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop() {
                    if anchor > 0 {
                        sizes.insert(anchor, total - start);
                    }
                }
            }
            Event::Alias(anchor) => {
                total = total.saturating_add(sizes.get(&anchor).copied().unwrap_or(1));
                if total > MAX_EXPANDED_NODES {
                    return Err(Problem {
                        path: FieldPath::root(),
                        position: Some(Position {
                            line: span.start.line(),
                            column: span.start.col() + 1,
                        }),
                        message: format!(
                            "aliases expand this file to more than {MAX_EXPANDED_NODES} nodes; write the values out or use fewer nested aliases"
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine levels of ten aliases each: 10^9 nodes from a few hundred bytes.
    fn laughs(levels: usize) -> String {
        let mut s = String::from("a0: &a0 [x]\n");
        for i in 1..=levels {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn a_billion_laughs_is_refused_at_the_alias_that_crosses_the_limit() {
        let p = check_expansion(&laughs(9)).expect_err("refused");
        assert!(p.message.contains("aliases expand"), "{}", p.message);
        assert_eq!(p.position.map(|pos| pos.line), Some(8));
    }

    #[test]
    fn ordinary_aliases_pass() {
        assert!(check_expansion(&laughs(3)).is_ok());
        let config =
            "defaults: &d { connect: 1s }\nroutes:\n  - { timeouts: *d }\n  - { timeouts: *d }\n";
        assert!(check_expansion(config).is_ok());
    }
}
