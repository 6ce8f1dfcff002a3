//! `promigrate inspect DIR`: what a data directory holds, and with `--deep` whether its
//! blocks, WAL and head read back whole.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{Outcome, Report, cancel_on_signal, report, runtime};
use crate::cli::InspectArgs;
use crate::exit::Code;

/// Runs `inspect`: exit 0 when the directory holds up, else 1.
pub fn run(a: &InspectArgs) -> Outcome {
    Outcome::of(inspect(a))
}

fn inspect(a: &InspectArgs) -> anyhow::Result<(Box<dyn Report>, Code)> {
    // Only the deep checks take long enough to need a clean stop on Ctrl-C.
    let (_rt, cancel) = if a.deep {
        let rt = runtime()?;
        let cancel = cancel_on_signal(&rt);
        (Some(rt), cancel)
    } else {
        (None, Arc::new(AtomicBool::new(false)))
    };
    let r = crate::inspect::run(&a.dir, a.deep, a.parallelism as usize, &cancel)?;
    let code = if r.ok { Code::Ok } else { Code::Findings };
    Ok((report(r, crate::inspect::InspectReport::render_text), code))
}
