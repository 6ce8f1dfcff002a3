//! `promigrate receive`: the receiver end of an in-cluster target (see [`crate::remote`]).
//! It speaks the protocol on stdin/stdout, which nothing else may write to, or with
//! `--listen` on a connection through a port-forward; logs go to stderr.

use anyhow::Context;

use super::Outcome;
use crate::exit::Code;

/// Serves the driver on stdin/stdout until it ends the stream; with `listen`, on the
/// connection the driver opens through a port-forward (or on stdin/stdout if it says so:
/// [`crate::remote::listen`]).
pub fn run(listen: bool) -> Outcome {
    let served = if listen {
        crate::remote::listen::serve_listening()
    } else {
        crate::remote::receiver::serve(std::io::stdin().lock(), std::io::stdout())
    }
    .context("receiver");
    Outcome::bare(served.map(|()| Code::Ok))
}
