//! Config errors that name the file, the line and the field path:
//! `conf/tollgate.yaml:14:5: routes[1].upstream: unknown upstream "apii"`.

use super::locate::{FieldPath, Position};
use std::fmt;

/// One thing wrong with a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field the problem is about.
    pub path: FieldPath,
    /// Where that field is in the file, when it is in the file.
    pub position: Option<Position>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The path as given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", render(file, problems))]
    Invalid {
        /// The path as given.
        file: String,
        /// What is wrong, in file order where known.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found, empty for a read error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render(file: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&p.display_in(file).to_string());
    }
    out
}

impl Problem {
    /// Formats as `file:line:col: path: message`.
    pub fn display_in<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        struct D<'a>(&'a Problem, &'a str);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let (p, file) = (self.0, self.1);
                match p.position {
                    Some(pos) => write!(f, "{file}:{}:{}: ", pos.line, pos.column)?,
                    None => write!(f, "{file}: ")?,
                }
                write!(f, "{}: {}", p.path, p.message)
            }
        }
        D(self, file)
    }
}
