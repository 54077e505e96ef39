//! Failures with an exit status, a plain explanation and a fix.

use std::fmt::Write as _;

/// The kind of problem that ended a command. Each kind has its own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Environment variables or options are missing, invalid or conflicting, or no
    /// credential is available.
    Config,
    /// The identity endpoint rejected or failed the token request, or returned a token
    /// that Redis cannot accept.
    Identity,
    /// Resolving, connecting to or authenticating with Redis failed, or a command did.
    Redis,
}

impl Category {
    /// Returns the process exit status for this kind of failure.
    pub fn exit_code(self) -> u8 {
        match self {
            Category::Config => 3,
            Category::Identity => 4,
            Category::Redis => 5,
        }
    }
}

/// The exit statuses, as `--help` shows them after each command's options.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  2  invalid command line
  3  configuration: environment variables or options are missing, invalid or
     conflicting, or no credential is available
  4  identity endpoint: the token request failed, or the token cannot be used for Redis
  5  Redis: resolving the host, connecting, TLS, authentication or a command failed";

/// A failure explained for the person at the terminal.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Decides the exit status.
    pub category: Category,
    /// The problem, in plain words.
    pub problem: String,
    /// The underlying error message, when it adds facts such as an HTTP status.
    pub detail: Option<String>,
    /// The action that removes the problem.
    pub fix: String,
}

impl Failure {
    /// Creates a failure without a detail line.
    pub fn new(category: Category, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Failure {
            category,
            problem: problem.into(),
            detail: None,
            fix: fix.into(),
        }
    }

    /// Adds the underlying error message.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Formats the failure as indented `detail:` and `fix:` lines under the problem.
    pub fn render(&self, indent: &str) -> String {
        let mut text = self.problem.clone();
        if let Some(detail) = &self.detail {
            let _ = write!(text, "\n{indent}detail: {detail}");
        }
        let _ = write!(text, "\n{indent}fix: {}", self.fix);
        text
    }

    /// Prints the failure to standard error.
    pub fn print(&self) {
        eprintln!("error: {}", self.render("  "));
    }
}
