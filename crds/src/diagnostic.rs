//! Diagnostics that name the file, the document, the field path and the fix.

use std::fmt;
use std::path::PathBuf;

/// Where a resource came from: a file and the 1-based index of the YAML document in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file the document was read from.
    pub file: PathBuf,
    /// 1-based document index within the file; 0 when the resource was not read from a file
    /// and `file` names it instead (`EventSource ns/name`).
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Document 0: not read from a file; `file` names the object (e.g. a cluster object).
        if self.document == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{}:document {}", self.file.display(), self.document)
    }
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The manifest cannot run as written.
    Error,
    /// The manifest runs, but probably not as meant.
    Warning,
}

/// A finding about a field of a manifest. Library checks produce `(path, message)` pairs; the
/// origin is attached by whoever knows the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file and document, when known.
    pub origin: Option<Location>,
    /// Field path such as `spec.subscribers[1].condition`; empty for the whole document.
    pub path: String,
    /// What is wrong and how to fix it. May span several lines (a CEL caret, for example).
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { origin: None, path: path.into(), message: message.into(), severity: Severity::Error }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(path, message) }
    }

    /// The same diagnostic, attributed to `origin`.
    #[must_use]
    pub fn at(mut self, origin: &Location) -> Self {
        self.origin = Some(origin.clone());
        self
    }

    /// Whether this is an error (as opposed to a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        write!(f, "{}", self.message)
    }
}
