//! The order of durability steps, seen from the system calls (strace): the "complete" mark
//! of a file (the source's mtime, which a resumed run trusts) follows its fsync; every
//! directory promigrate changed is fsync'ed, also when a run stops part-way and in the
//! quarantine.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CALLS: &str = "trace=fsync,fdatasync,utimensat,rename,renameat,renameat2,mkdir,mkdirat";

/// One traced call: its name and the paths strace -y decorated its arguments with.
#[derive(Debug)]
struct Call {
    name: String,
    paths: Vec<String>,
    line: String,
}

/// Parses `strace -f -y` output: `PID name(arg<path>, "path", ...) = 0`.
fn calls(log: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter(|l| l.contains(") = 0") || l.contains("<unfinished ...>"))
        .filter_map(|l| {
            let l = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
            let (name, rest) = l.split_once('(')?;
            // fd<path> and "path" arguments, in order; a relative "name" right after a
            // directory descriptor (mkdirat, renameat) is joined to that directory's path.
            let mut paths: Vec<String> = Vec::new();
            let mut last_fd: Option<String> = None;
            let mut s = rest;
            while let Some(i) = s.find(['<', '"']) {
                let is_fd = s.as_bytes()[i] == b'<';
                let close = if is_fd { '>' } else { '"' };
                let Some(j) = s[i + 1..].find(close) else {
                    break;
                };
                let text = s[i + 1..i + 1 + j].to_string();
                if is_fd {
                    paths.push(text.clone());
                    last_fd = Some(text);
                } else {
                    match last_fd.take() {
                        Some(dir) if !text.starts_with('/') => {
                            paths.pop();
                            paths.push(format!("{dir}/{text}"));
                        }
                        _ => paths.push(text),
                    }
                }
                s = &s[i + 2 + j..];
            }
            Some(Call {
                name: name.to_string(),
                paths,
                line: l.to_string(),
            })
        })
        .collect()
}

fn traced(ws: &Workspace, args: &[&str]) -> (i32, Vec<Call>) {
    let log = ws.dir.path().join("strace.log");
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-qq", "-s", "4096", "-e", CALLS, "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_promigrate"))
        .args(args)
        .arg("-f")
        .arg(&ws.plan)
        .arg("--state-dir")
        .arg(&ws.state);
    let (code, out, err) = run(c);
    assert!(
        code == 0 || !err.contains("strace:"),
        "strace failed: {out}{err}"
    );
    (code, calls(&log))
}

fn is_fsync(c: &Call) -> bool {
    c.name == "fsync" || c.name == "fdatasync"
}

/// Regression: a copied file got the source's mtime (the mark a resumed run takes as
/// "complete") before it was fsync'ed, so a crash could leave a file whose mark says complete
/// and whose data never reached the disk.
#[test]
fn a_copied_file_is_marked_complete_only_after_its_fsync() {
    let ws = Workspace::new();
    let (code, calls) = traced(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0);
    let mut checked = 0;
    for (i, c) in calls.iter().enumerate() {
        // futimens(fd, times) is utimensat(fd, NULL, times, 0).
        if c.name != "utimensat" || !c.line.contains("NULL") {
            continue;
        }
        let Some(path) = c.paths.first() else {
            continue;
        };
        if !path.starts_with(&ws.target().display().to_string()) {
            continue;
        }
        assert!(
            calls[..i]
                .iter()
                .any(|p| is_fsync(p) && p.paths.first() == Some(path)),
            "{path} got its times before any fsync of it: {}",
            c.line
        );
        checked += 1;
    }
    assert!(
        checked > 10,
        "only {checked} files were seen getting their times"
    );
}

/// Regression: the quarantine's new directories were never fsync'ed, so the entries moved
/// into them could be lost in a crash.
#[test]
fn the_quarantine_directories_are_fsynced() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    std::fs::write(ws.target().join("wal/00099999"), b"foreign").unwrap();
    let (code, calls) = traced(&ws, &["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0);
    let q = ws.target().join(".promigrate-quarantine");
    let made: Vec<&String> = calls
        .iter()
        .filter(|c| c.name.starts_with("mkdir"))
        .filter_map(|c| c.paths.last())
        .filter(|p| p.starts_with(&q.display().to_string()))
        .collect();
    assert!(made.len() >= 3, "quarantine, its time, wal/: {made:?}");
    let synced = |dir: &str| {
        calls
            .iter()
            .any(|c| is_fsync(c) && c.paths.first().map(String::as_str) == Some(dir))
    };
    for dir in &made {
        assert!(synced(dir), "{dir} was created but never fsync'ed");
    }
    assert!(synced(&ws.target().display().to_string()));
}

/// Regression: a run that stopped part-way (a signal, an error) skipped the fsync of the
/// directories it had renamed blocks into.
#[test]
fn a_run_stopped_part_way_fsyncs_the_directories_it_changed() {
    let ws = Workspace::from_fixture(gib_fixture(), "");
    let (_, plan) = ws.run_json(&["plan"]);
    let bytes = only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    let mut child = ws
        .cmd(&[
            "apply",
            "--yes",
            "--bwlimit",
            &format!("{}K", bytes / 1024 / 20),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Attach once a block is published, then stop it with SIGTERM.
    let target = ws.target();
    let start = Instant::now();
    let published = || {
        std::fs::read_dir(&target)
            .is_ok_and(|d| d.flatten().any(|e| e.path().join("meta.json").exists()))
    };
    while !published() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no block published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = ws.dir.path().join("strace-attached.log");
    let mut strace = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "4096", "-e", CALLS, "-o"])
        .arg(&log)
        .arg("-p")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until strace has attached and a block was renamed into place under it.
    let start = Instant::now();
    loop {
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen.contains("rename") && seen.contains(".promigrate-staging") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no rename seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().unwrap();
    let _ = strace.wait();
    assert_ne!(status.code(), Some(0), "the run was to be stopped part-way");
    let calls = calls(&log);
    let root = target.display().to_string();
    let last_rename = calls
        .iter()
        .rposition(|c| {
            c.name.starts_with("rename")
                && c.paths
                    .last()
                    .is_some_and(|p| Path::new(p).parent() == Some(target.as_path()))
        })
        .expect("a block renamed into the root while traced");
    assert!(
        calls[last_rename..]
            .iter()
            .any(|c| is_fsync(c) && c.paths.first() == Some(&root)),
        "the root was not fsync'ed after its last rename ({})",
        calls[last_rename].line
    );
}
