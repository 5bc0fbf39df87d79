//! Config errors that name the file, the line and the key, and serde_yaml_ng's errors
//! turned into them.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate;

/// Why an endpoint config could not be used. `Display` is what the admin sees:
/// `FILE:LINE: KEY: what is wrong and what would be valid`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the endpoint config: {source}", .file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The file is not a valid endpoint config.
    #[error("{}", Located { file, line: *line, key: key.as_deref(), message })]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The 1-based line of the offending key or value, where known.
        line: Option<usize>,
        /// The dotted key (`provider.max_blocks`), where the error is about one.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// The dotted key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => key.as_deref(),
        }
    }
}

struct Located<'a> {
    file: &'a Path,
    line: Option<usize>,
    key: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Turns a serde_yaml_ng error into a [`ConfigError::Invalid`], with the key spelled out
/// (serde names the map, not the unknown key in it) and the line refined from the text
/// where serde only knows where the enclosing map starts.
pub(super) fn from_yaml(
    error: &serde_yaml_ng::Error,
    text: &str,
    file: &Path,
    syntax: bool,
) -> ConfigError {
    let mut line = error.location().map(|l| l.line());
    let full = strip_marks(&error.to_string());
    let (mut key, mut message) = match full.split_once(": ") {
        Some((head, rest)) if is_path(head) => (Some(head.to_owned()), rest.to_owned()),
        _ => (None, full.clone()),
    };
    let join = |key: &Option<String>, name: &str| match key {
        Some(parent) => format!("{parent}.{name}"),
        None => name.to_owned(),
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let mut valid = quoted_names(expected);
            if key.as_deref() == Some("provider") {
                // Read past by the tagged section (see `tagged.rs`), yet valid.
                valid.insert(0, "type");
            }
            let path = join(&key, name);
            message = if valid.is_empty() {
                "unknown key; this section takes no keys".to_owned()
            } else {
                format!("unknown key; valid keys here: {}", valid.join(", "))
            };
            line = locate::key_line(text, &path).or(line);
            key = Some(path);
        }
    } else if let Some((name, _)) = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split_once('`'))
        .or_else(|| {
            // The same, found by the first pass, which reads the text as plain YAML.
            message
                .strip_prefix("duplicate entry with key \"")
                .and_then(|rest| rest.split_once('"'))
        })
    {
        let path = join(&key, name);
        message = "duplicate key".to_owned();
        line = locate::key_lines(text, &path).get(1).copied().or(line);
        key = Some(path);
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            key = Some(join(&key, name));
            message = "missing key".to_owned();
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once('`') {
            message = format!(
                "unknown value `{value}`; valid values: {}",
                quoted_names(expected).join(", ")
            );
        }
    } else if syntax {
        message = format!("invalid YAML: {message}");
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        message = plain_types(&message);
    }
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        key,
        message,
    }
}

/// serde's "expected u32" and "expected struct EngineConfig" in an admin's words.
fn plain_types(message: &str) -> String {
    let Some((found, expected)) = message.split_once(", expected ") else {
        return message.to_owned();
    };
    let expected = match expected {
        "u32" | "u64" => "a whole number (0 or more)",
        "u16" => "a port number (1 to 65535)",
        "f64" => "a number",
        "a string" | "a borrowed string" => "a string",
        e if e.starts_with("struct ") => "a mapping (key: value lines)",
        e if e.starts_with("a tuple of size 2") => "a list of two ports, [first, last]",
        e => e,
    };
    format!("{found}, expected {expected}")
}

/// Whether `head` (before the first `: ` of a message) is serde_yaml_ng's path to the
/// value, such as `provider.max_blocks` or `engine.port_range[0]`, rather than the start of
/// a sentence such as `invalid type`.
fn is_path(head: &str) -> bool {
    !head.is_empty() && !head.contains(|c: char| c.is_whitespace() || c == '`' || c == '"')
}

/// The names between backticks: serde's "expected `a`, `b` or `c`".
fn quoted_names(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Removes the ` at line L column C` (or ` at position N`) parts: the line goes in front.
fn strip_marks(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let skipped = skip_mark(after);
        if skipped.len() == after.len() {
            out.push_str(" at ");
        }
        rest = skipped;
    }
    out.push_str(rest);
    out
}

/// `after` without a leading `line L column C` or `position N`, or `after` unchanged.
fn skip_mark(after: &str) -> &str {
    let number = |s: &str| -> Option<usize> {
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        (digits > 0).then_some(digits)
    };
    if let Some(s) = after.strip_prefix("line ") {
        if let Some(n) = number(s) {
            if let Some(s) = s[n..].strip_prefix(" column ") {
                if let Some(m) = number(s) {
                    return &s[m..];
                }
            }
        }
    } else if let Some(s) = after.strip_prefix("position ") {
        if let Some(n) = number(s) {
            return &s[n..];
        }
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_removed_wherever_they_are() {
        assert_eq!(
            strip_marks("did not find expected key at line 3 column 2, while parsing a block mapping at line 1 column 1"),
            "did not find expected key, while parsing a block mapping"
        );
        assert_eq!(strip_marks("x at position 5"), "x");
        assert_eq!(strip_marks("look at this"), "look at this");
    }

    #[test]
    fn display_has_file_line_key_and_message() {
        let e = ConfigError::Invalid {
            file: "/etc/ep.yaml".into(),
            line: Some(7),
            key: Some("provider.max_blocks".into()),
            message: "too small".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/ep.yaml:7: provider.max_blocks: too small"
        );
        assert_eq!((e.line(), e.key()), (Some(7), Some("provider.max_blocks")));
        let e = ConfigError::Invalid {
            file: "/etc/ep.yaml".into(),
            line: None,
            key: None,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/etc/ep.yaml: bad");
    }

    #[test]
    fn quoted_names_reads_serde_lists() {
        assert_eq!(quoted_names("expected `a` or `b`"), ["a", "b"]);
        assert_eq!(
            quoted_names("expected one of `a`, `b`, `c`"),
            ["a", "b", "c"]
        );
        assert!(quoted_names("there are no fields").is_empty());
    }
}
