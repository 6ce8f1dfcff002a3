//! promigrate: move a Prometheus TSDB onto a Kubernetes volume and prove the copy is good.
//!
//! Phases, each its own module: [`plan`] (read-only inventory, diff and cost), [`sync`]
//! (execute a plan: rate-limited, parallel, resumable copies), [`perms`] (ownership and
//! modes), [`verify`] (prove equality). [`inspect`] summarises any data directory.
//! [`commands`] run them for the command line; `run` dispatches, and prints each outcome
//! once.

pub mod cache;
pub mod cli;
pub mod commands;
pub mod exit;
pub mod fsutil;
pub mod hash;
pub mod inspect;
pub mod k8s;
pub mod live;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod par;
pub mod perms;
pub mod plan;
pub mod progress;
pub mod promversion;
pub mod record;
pub mod relpath;
pub mod remote;
pub mod retry;
pub mod source;
pub mod ssh;
pub mod sync;
pub mod tsdb;
pub mod units;
pub mod verify;
pub mod volume;

use cli::{Cli, Command, Output};
use exit::Code;

/// Runs one command line and prints its outcome once: the report, or with `--output json`
/// a JSON document with `"ok": false` when the command failed before it had one. Errors
/// are returned for `main` to print.
pub fn run(cli: Cli) -> anyhow::Result<Code> {
    let output = match &cli.command {
        Command::Plan(a) => a.common.output,
        Command::Apply(a) => a.common.output,
        Command::Verify(a) => a.common.output,
        Command::Inspect(a) => a.output,
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Schema
        | Command::Receive { .. } => Output::Text,
    };
    let outcome = match &cli.command {
        Command::Plan(a) => commands::plan::run(a),
        Command::Apply(a) => commands::apply::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Completions { shell } => commands::generate::completions(*shell),
        Command::Man { command } => commands::generate::man(command.as_deref()),
        Command::Schema => commands::generate::schema(),
        Command::Receive { listen } => commands::receive::run(*listen),
    };
    commands::finish(outcome, output)
}
