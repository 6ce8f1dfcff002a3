//! `promigrate receive`: the receiver end of an in-cluster target (see [`crate::remote`]).
//! It speaks the protocol on stdin/stdout, which nothing else may write to; logs go to
//! stderr.

use anyhow::Context;

use super::Outcome;
use crate::exit::Code;

/// Serves the driver on stdin/stdout until it ends the stream.
pub fn run() -> Outcome {
    let served = crate::remote::receiver::serve(std::io::stdin().lock(), std::io::stdout())
        .context("receiver");
    Outcome::bare(served.map(|()| Code::Ok))
}
