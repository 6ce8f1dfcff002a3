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
    // Made first, then written: a closed pipe (`| head`) is no failure and no panic.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    Outcome::bare(write_stdout(&script, "the completion script"))
}

/// Writes `bytes` to stdout; a closed pipe is not a failure.
fn write_stdout(bytes: &[u8], what: &str) -> anyhow::Result<Code> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Code::Ok),
        r => r
            .map(|()| Code::Ok)
            .with_context(|| format!("cannot write {what}")),
    }
}

/// `promigrate man [COMMAND]`: the man page (roff) of promigrate, or of one of the commands
/// its page lists (`promigrate-plan(1)`…), on stdout.
pub fn man(command: Option<&str>) -> Outcome {
    let mut root = cli::command_for_invocation(None);
    // Built, so that clap's own `help` command (which the page lists too) is there.
    root.build();
    let cmd = match command {
        None => root,
        // A hidden command (the receiver's) has no page, as the list below says.
        Some(name) => match root.find_subcommand(name).filter(|c| !c.is_hide_set()) {
            // Printed once, then the process ends.
            Some(c) => c
                .clone()
                .name(&*Box::leak(format!("promigrate-{name}").into_boxed_str()))
                .version(env!("CARGO_PKG_VERSION")),
            None => {
                let known: Vec<&str> = root
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|c| c.get_name())
                    .collect();
                return Outcome::bare(Err(crate::exit::InvalidInput(format!(
                    "no command {name:?}: man pages exist for {}",
                    known.join(", ")
                ))
                .into()));
            }
        },
    };
    let mut out = std::io::stdout().lock();
    Outcome::bare(match render_man(&cmd, command, &mut out) {
        // A closed pipe (`| head`) is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(Code::Ok)
        }
        r => r.map(|()| Code::Ok),
    })
}

/// A page as clap_mangen renders it, but with the help's closing text as sections of their
/// own: EXAMPLES (a command's), and EXIT STATUS as a list, one item per code.
fn render_man(
    cmd: &clap::Command,
    command: Option<&str>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let w = |r: std::io::Result<()>| r.context("cannot write the man page");
    w(man.render_title(out))?;
    w(man.render_name_section(out))?;
    w(man.render_synopsis_section(out))?;
    w(man.render_description_section(out))?;
    w(man.render_options_section(out))?;
    // clap's `help` lists copies of every command: pages that do not exist.
    if command != Some("help") && cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        w(man.render_subcommands_section(out))?;
    }
    let roff = |s: &str| s.replace('\\', "\\e").replace('-', "\\-");
    if let Some((_, examples)) = cli::EXAMPLES.iter().find(|(n, _)| Some(*n) == command) {
        let mut s = String::from(".SH EXAMPLES\n");
        for line in examples.lines() {
            s.push_str(&format!(".nf\n{}\n.fi\n", roff(line.trim_start())));
        }
        w(out.write_all(s.as_bytes()))?;
    }
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, text) in exit_codes() {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff(&text)));
    }
    w(out.write_all(s.as_bytes()))?;
    // A command's own page has no version (clap_mangen would panic on it).
    if cmd.get_version().is_some() {
        w(man.render_version_section(out))?;
    }
    Ok(())
}

/// The exit codes of [`crate::exit::HELP`], each with its text on one line.
fn exit_codes() -> Vec<(String, String)> {
    let mut codes: Vec<(String, String)> = Vec::new();
    for line in crate::exit::HELP.lines().skip(1) {
        let t = line.trim_start();
        match t.split_once("  ") {
            Some((code, text)) if !code.is_empty() && code.chars().all(|c| c.is_ascii_digit()) => {
                codes.push((code.to_string(), text.trim().to_string()));
            }
            _ => {
                if let Some((_, text)) = codes.last_mut() {
                    text.push(' ');
                    text.push_str(t);
                }
            }
        }
    }
    codes
}

/// `promigrate schema`: the plan file's JSON Schema on stdout.
pub fn schema() -> Outcome {
    let schema = crate::plan::file::schema();
    let encoded = serde_json::to_string_pretty(&schema).context("cannot encode the schema");
    Outcome::bare(encoded.and_then(|s| write_stdout(format!("{s}\n").as_bytes(), "the schema")))
}
