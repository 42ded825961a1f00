//! The one distinction berth-image's exit codes make: was the input refused, or did the work
//! fail?
//!
//! Every error type of this crate answers [`Kind`] through an exhaustive `match` (no wildcard
//! arm), so a new variant does not build until someone decides which it is; the binary maps
//! `Kind` to an exit code in exactly one place.

/// How an error ends a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The input was refused before anything was written: no ref moved, no file at `--out`,
    /// nothing created in the account (exit 3).
    Refused,
    /// The input was accepted but the work failed: the repository, a tool, the disk or a remote
    /// API (exit 1).
    Failed,
}

/// An error that knows its [`Kind`].
pub trait Classified: std::error::Error {
    fn kind(&self) -> Kind;
}
