//! Error collection: the issue and error types a failed validation returns, and the [`Validator`]
//! every section reports into, with line numbers taken from the TOML spans.

use std::fmt;
use toml::Spanned;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// A config that failed validation: every error found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        let parts: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects every issue and warning of one config text; each section adds to it.
pub(super) struct Validator<'a> {
    pub text: &'a str,
    pub errors: Vec<ConfigIssue>,
    pub warnings: Vec<String>,
}

impl Validator<'_> {
    /// Record an issue at the line of `spanned`, if there is one.
    pub fn err<T>(&mut self, key: &str, spanned: Option<&Spanned<T>>, message: impl Into<String>) {
        let line = spanned.map(|s| line_of(self.text, s.span().start));
        self.errors.push(ConfigIssue {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }
}

/// The 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

pub(super) fn toml_error_key(e: &toml::de::Error) -> String {
    let msg = e.message();
    // serde's "unknown field `x`, expected ..." names the key; keep it as the key of the issue.
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    "syntax".to_string()
}
