//! apply on a terminal, as an operator runs it: the confirmation prompt and the progress
//! bar, through a real pseudo-terminal (util-linux `script`, which runs the command on a
//! pty and passes what it reads on its stdin to it, Ctrl-C included).

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A command on a pty: what it printed so far (stdout and stderr, as the terminal got
/// them), and its keyboard.
struct Tty {
    child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Tty {
    fn start(cmd: &Command) -> Tty {
        // `script` runs the line with `$SHELL -c`. dash (Debian's /bin/sh, and the shell
        // when SHELL is unset, as under CI) does not exec a lone command, so the Ctrl-C
        // would also kill the shell and `script` would report 130 instead of promigrate's
        // own exit code: `exec` makes the command the pty's process whatever the shell.
        let mut line = String::from("exec ");
        line.push_str(&shell_quote(&cmd.get_program().to_string_lossy()));
        for a in cmd.get_args() {
            line.push(' ');
            line.push_str(&shell_quote(&a.to_string_lossy()));
        }
        let mut script = Command::new("script");
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        let mut child = script
            .env("SHELL", "/bin/sh")
            .args(["-q", "-f", "-e", "-c", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run script (util-linux)");
        let keys = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Tty {
            child,
            keys,
            screen,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `what` (at most 60 s).
    fn wait_for(&self, what: impl Fn(&str) -> bool, name: &str) {
        let start = Instant::now();
        while !what(&self.text()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} never showed: {}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits for the command to end; its exit code (`script -e` passes it on).
    fn exit_code(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader thread gets the rest of the output.
                std::thread::sleep(Duration::from_millis(200));
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
                panic!("did not end: {}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Issue 18: the prompt on a terminal; "n" writes nothing; "y" after another promigrate
/// took the target's lock while the prompt waited says "Not started: … Nothing was
/// written" (not a copy of 0 B), and nothing is written.
#[test]
fn the_prompt_declined_or_answered_after_the_target_was_taken_writes_nothing() {
    let ws = Workspace::new();
    std::fs::create_dir(ws.target()).unwrap();

    let mut tty = Tty::start(&ws.cmd(&["apply", "--source-stopped"]));
    tty.wait_for(|s| s.contains("[y/N]"), "the prompt");
    tty.type_keys(b"n\r");
    let code = tty.exit_code();
    let screen = tty.text();
    assert_eq!(code, 1, "{screen}");
    assert!(
        screen.contains("Not applied (declined at the prompt): nothing was written"),
        "{screen}"
    );

    let mut tty = Tty::start(&ws.cmd(&["apply", "--source-stopped"]));
    tty.wait_for(|s| s.contains("[y/N]"), "the prompt");
    // Another apply takes the target while the operator reads the plan.
    let holder = LockHolder::take(&ws.target(), false);
    tty.type_keys(b"y\r");
    let code = tty.exit_code();
    drop(holder);
    let screen = tty.text();
    assert_eq!(code, 3, "{screen}");
    assert!(
        screen.contains("Not started: another promigrate apply or verify is using")
            && screen.contains("Nothing was written to the target."),
        "{screen}"
    );
    assert!(!screen.contains("Stopped part-way"), "{screen}");
    assert!(!screen.contains("apply: copying"), "{screen}");
    assert_eq!(
        std::fs::read_dir(ws.target()).unwrap().count(),
        0,
        "nothing may be written"
    );
}

/// Issue 18: the progress bar draws on a terminal, and after Ctrl-C it stays on the last
/// figure it counted, which is what the summary below it says was written (files finished
/// and unfinished alike).
#[test]
fn after_ctrl_c_the_progress_bar_and_the_summary_agree_on_the_bytes() {
    let ws = Workspace::new();
    let mut tty = Tty::start(&ws.cmd(&["apply", "--yes", "--source-stopped", "--bwlimit", "100K"]));
    // Some bytes counted, then Ctrl-C on the keyboard.
    tty.wait_for(
        |s| {
            s.rsplit_once("apply [")
                .and_then(|(_, last)| last.split_once("] "))
                .is_some_and(|(_, figures)| figures.contains('/') && !figures.starts_with("0 B/"))
        },
        "the bar with some bytes",
    );
    tty.type_keys(b"\x03");
    let code = tty.exit_code();
    let screen = tty.text();
    assert_eq!(code, 3, "{screen}");
    let summary = screen
        .lines()
        .find(|l| l.starts_with("Stopped part-way"))
        .unwrap_or_else(|| panic!("no summary: {screen}"));
    let written = match summary.split_once(" written,") {
        // Files were left unfinished: "… and X of unfinished files (…): W written, …".
        Some((head, _)) => head.rsplit_once(": ").unwrap().1.to_string(),
        // None were: the bytes copied are all that was written.
        None => summary
            .trim_start_matches("Stopped part-way: ")
            .split(" in ")
            .next()
            .unwrap()
            .to_string(),
    };
    // The bar's last drawing, before the summary: "apply [===>   ] W/T rate ETA …".
    let before = &screen[..screen.find("Stopped part-way").unwrap()];
    let last_bar = before.rsplit("apply [").next().unwrap();
    let shown = last_bar
        .split_once("] ")
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap();
    assert_eq!(shown, written, "bar: {last_bar}\nsummary: {summary}");
}
