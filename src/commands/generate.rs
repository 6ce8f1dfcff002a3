//! The commands that generate files for the shell and the docs: completions, the man page
//! and the plan file's JSON Schema. They write stdout themselves and have no JSON report.

use anyhow::Context;

use super::Outcome;
use crate::cli;
use crate::exit::Code;

/// `promigrate completions SHELL`: the script on stdout, for the name it was invoked as.
pub fn completions(shell: clap_complete::Shell) -> Outcome {
    let mut cmd = cli::command_for_invocation(std::env::args_os().next());
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    Outcome::bare(Ok(Code::Ok))
}

/// `promigrate man`: the man page (roff) on stdout.
pub fn man() -> Outcome {
    let cmd = cli::command_for_invocation(None);
    let mut out = std::io::stdout().lock();
    let written = clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("cannot write the man page");
    Outcome::bare(written.map(|()| Code::Ok))
}

/// `promigrate schema`: the plan file's JSON Schema on stdout.
pub fn schema() -> Outcome {
    let schema = crate::plan::file::schema();
    let encoded = serde_json::to_string_pretty(&schema).context("cannot encode the schema");
    Outcome::bare(encoded.map(|s| {
        println!("{s}");
        Code::Ok
    }))
}
