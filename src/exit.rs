//! Exit codes, as a type. They are a contract: runbooks gate cutover on them.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success: the plan has no blockers, the apply completed, the verify found the copy equal |
//! | 1 | findings: plan blockers, differences found by verify, an apply refused (blockers, a running source, or "no" at the prompt) or stopped at its deadline |
//! | 2 | invalid usage or plan file (including a missing plan file, source path or target mount path) |
//! | 3 | runtime failure: I/O, permissions, full disk, interruption |

/// The process outcome of a promigrate command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Everything asked for was done and holds.
    Ok = 0,
    /// The command ran, and what it found is not OK (blockers, differences).
    Findings = 1,
    /// The command line or the plan file is invalid; nothing was written.
    Invalid = 2,
    /// The command failed while running (I/O, permissions, full disk, interrupted).
    Failure = 3,
}

impl From<Code> for std::process::ExitCode {
    fn from(c: Code) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// Marks an error as caused by invalid input (exit 2) rather than a runtime failure (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Marks an error as a finding (exit 1): the command ran and what it found is not OK, e.g.
/// the verify after an apply found differences.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Finding(pub String);

/// Maps an error to its exit code: [`InvalidInput`] anywhere in the chain means 2,
/// [`Finding`] 1, else 3.
pub fn classify(err: &anyhow::Error) -> Code {
    if err.chain().any(|e| e.is::<InvalidInput>()) {
        Code::Invalid
    } else if err.chain().any(|e| e.is::<Finding>()) {
        Code::Findings
    } else {
        Code::Failure
    }
}

/// The exit-code table shown in `--help`.
pub const HELP: &str = "\
Exit codes:
  0  success (no blockers; apply completed; verify found the target equal)
  1  findings: plan blockers, verify differences, apply refused (blockers, a running source,
     or \"no\" at the prompt) or stopped at its --deadline (incomplete; rerun to continue)
  2  invalid usage or plan file (including a missing plan file, source path or target mount path)
  3  runtime failure: I/O, permission, disk full, interrupted";
