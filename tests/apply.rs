//! `apply` behaviour on real data: idempotence, a read-only source, resume after `kill -9`
//! at several moments, a full disk, quarantine of extraneous entries, foreign data left alone.

mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn second_apply_rewrites_nothing_and_source_is_untouched() {
    let ws = Workspace::new();
    let src_meta = snapshot(&ws.source);
    let src_content = content_hashes(&ws.source);

    let (code, first) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{first}");
    assert!(only(&first)["apply"]["copied_files"].as_u64().unwrap() > 10);
    let after_first = snapshot(&ws.target());

    let (code, second) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{second}");
    assert_eq!(only(&second)["plan"]["stats"]["copy_files"], 0);
    assert_eq!(only(&second)["apply"]["copied_files"], 0);
    assert_eq!(only(&second)["apply"]["ownership_fixed"], 0);
    assert_eq!(
        snapshot(&ws.target()),
        after_first,
        "inodes, mtimes or sizes changed on a no-op apply"
    );

    let (code, _, _) = ws.run(&["verify"]);
    assert_eq!(code, 0);
    assert_eq!(snapshot(&ws.source), src_meta, "the source was modified");
    assert_eq!(
        content_hashes(&ws.source),
        src_content,
        "source content changed"
    );
}

/// Kills apply with SIGKILL after `delay`, then checks the invariants and resumes.
fn kill_and_resume(delay: Duration) {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let total_files = only(&plan)["stats"]["source_files"].as_u64().unwrap();
    let total_bytes = only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    // Slow enough (~5 s) that the kill lands mid-copy.
    let mut child = spawn_slow_apply(&ws, total_bytes, 5);
    std::thread::sleep(delay);
    assert!(
        child.try_wait().unwrap().is_none(),
        "apply ended before the kill at {delay:?}: the test would prove nothing"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Nothing half-written under a final name: every block dir and segment file that exists
    // under its final name is complete.
    let target = ws.target();
    assert!(
        target.exists(),
        "apply had not started writing at {delay:?}"
    );
    let mut complete = 0u64;
    {
        for e in walkdir::WalkDir::new(&target)
            .into_iter()
            .map(|e| e.unwrap())
        {
            let rel = e
                .path()
                .strip_prefix(&target)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !e.file_type().is_file() || rel.contains(".promigrate") {
                continue;
            }
            let src = std::fs::metadata(ws.source.join(&rel)).unwrap();
            assert_eq!(
                e.metadata().unwrap().len(),
                src.len(),
                "{rel} is visible but incomplete after kill -9 at {delay:?}"
            );
            complete += 1;
        }
        for b in std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().path())
        {
            if b.join("meta.json").exists() || b.join("index").exists() {
                let name = b.file_name().unwrap();
                let want = walkdir::WalkDir::new(ws.source.join(name))
                    .into_iter()
                    .filter(|e| e.as_ref().unwrap().file_type().is_file())
                    .count();
                let have = walkdir::WalkDir::new(&b)
                    .into_iter()
                    .filter(|e| e.as_ref().unwrap().file_type().is_file())
                    .count();
                assert_eq!(have, want, "block {name:?} published incomplete");
            }
        }
    }

    assert!(
        complete < total_files,
        "everything was complete at {delay:?}: the kill landed after the copy"
    );
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "resume failed after kill at {delay:?}: {v}");
    let copied = only(&v)["apply"]["copied_files"].as_u64().unwrap();
    let resumed = only(&v)["apply"]["resumed_files"].as_u64().unwrap();
    eprintln!(
        "kill at {delay:?}: {complete} complete, then {copied} copied + {resumed} resumed of {total_files}"
    );
    assert_eq!(
        copied + resumed + complete,
        total_files,
        "resume recopied complete files (kill at {delay:?}): {v}"
    );
    assert!(
        leftovers(&ws.mount).is_empty(),
        "temp files left: {:?}",
        leftovers(&ws.mount)
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "after kill at {delay:?}:\n{out}");
}

#[test]
fn kill_9_early_then_resume() {
    kill_and_resume(Duration::from_millis(150));
}

#[test]
fn kill_9_in_the_middle_then_resume() {
    kill_and_resume(Duration::from_millis(1500));
}

#[test]
fn kill_9_late_then_resume() {
    kill_and_resume(Duration::from_millis(3500));
}

#[test]
fn sigterm_stops_cleanly_and_resumes() {
    let ws = Workspace::new();
    let child = ws
        .cmd(&["apply", "--yes", "--bwlimit", "60K"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("rerun apply to resume"), "{err}");
    assert_no_temp_files(&ws.mount, "after SIGTERM");
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ws.run(&["verify"]).0, 0);
}

#[test]
fn full_disk_fails_clearly_and_a_rerun_after_freeing_space_completes() {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let need = only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    let _fs = Tmpfs::mount(&ws.mount, &format!("{}k", need / 1024 * 2 + 256));
    let child = ws
        .cmd(&[
            "apply",
            "--yes",
            "--bwlimit",
            &format!("{}K", need / 1024 / 4),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Someone else fills the volume while apply runs.
    std::thread::sleep(Duration::from_millis(700));
    let filler = ws.mount.join("filler");
    let _ = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .arg("bs=4k")
        .stderr(Stdio::null())
        .status();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("target volume is full") && err.contains(&ws.target().display().to_string()),
        "the error names the file: {err}"
    );
    let record = latest_record(&ws, "apply");
    assert_eq!(record["exit_code"], 3);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("target volume is full")
    );
    assert!(
        only(&record["report"])["apply"]["copied_files"].is_u64(),
        "a failed apply records what it did: {record}"
    );
    assert_no_temp_files(&ws.mount, "on a full disk");
    // Staged files kept for resume are complete, never partial.
    let staging = ws.target().join(".promigrate-staging");
    for e in walkdir::WalkDir::new(&staging)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
    {
        let rel = e.path().strip_prefix(&staging).unwrap();
        assert_eq!(
            e.metadata().unwrap().len(),
            std::fs::metadata(ws.source.join(rel)).unwrap().len(),
            "partial staged file {rel:?}"
        );
    }
    std::fs::remove_file(&filler).unwrap();
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn extraneous_entries_block_or_warn_and_quarantine_never_deletes() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let t = ws.target();
    // A block and a WAL segment that the source does not have, and foreign data.
    let foreign_block = t.join("01ARZ3NDEKTSV4RRFFQ69G5FAV");
    std::fs::create_dir_all(foreign_block.join("chunks")).unwrap();
    std::fs::write(
        foreign_block.join("meta.json"),
        r#"{"ulid":"01ARZ3NDEKTSV4RRFFQ69G5FAV","minTime":0,"maxTime":1,"version":1}"#,
    )
    .unwrap();
    std::fs::write(t.join("wal/00099999"), b"foreign wal").unwrap();
    std::fs::create_dir(t.join("lost+found")).unwrap();
    std::fs::write(t.join("notes.txt"), b"keep me").unwrap();

    // wal/ is mirrored: a foreign segment (it would break replay) is quarantined by the
    // final phase, never deleted; a presync leaves it alone.
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("+ wal/00099999") && out.contains("moved to quarantine by the final phase"),
        "{out}"
    );
    assert_eq!(ws.run(&["apply", "--yes", "--phase", "presync"]).0, 0);
    assert!(
        t.join("wal/00099999").exists(),
        "presync touches no segment"
    );
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert!(!t.join("wal/00099999").exists());
    let q = std::path::PathBuf::from(only(&v)["apply"]["quarantine_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read(q.join("wal/00099999")).unwrap(),
        b"foreign wal"
    );

    // The extra block: a warning; apply leaves it; verify reports it (+).
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("+ 01ARZ3NDEKTSV4RRFFQ69G5FAV") && out.contains("left in place"),
        "{out}"
    );
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    assert!(foreign_block.join("meta.json").exists());
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("+ 01ARZ3NDEKTSV4RRFFQ69G5FAV"), "{out}");

    // deleteExtraneous: listed first, moved to quarantine, not deleted.
    std::fs::write(t.join("wal/00099999"), b"foreign wal").unwrap();
    ws.write_plan("  deleteExtraneous: true\n");
    let (code, v) = ws.run_json(&["apply", "--yes", "--dry-run"]);
    assert_eq!(code, 0);
    let actions = json_strings(&v["actions"]);
    assert!(
        actions[0].starts_with("quarantine") && actions[1].starts_with("quarantine"),
        "{actions:?}"
    );
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    let q = std::path::PathBuf::from(only(&v)["apply"]["quarantine_dir"].as_str().unwrap());
    assert!(q.starts_with(t.join(".promigrate-quarantine")));
    assert_eq!(
        std::fs::read(q.join("wal/00099999")).unwrap(),
        b"foreign wal"
    );
    assert!(q.join("01ARZ3NDEKTSV4RRFFQ69G5FAV/meta.json").exists());
    assert!(!foreign_block.exists() && !t.join("wal/00099999").exists());
    // Foreign, non-TSDB data is never touched.
    assert_eq!(std::fs::read(t.join("notes.txt")).unwrap(), b"keep me");
    assert!(t.join("lost+found").is_dir());
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// Kill -9 while a block is half staged (its chunk file complete, its index in flight):
/// the rerun keeps the complete staged file and copies only the rest.
#[test]
fn kill_9_mid_block_keeps_complete_staged_files() {
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::with_extra("");
    std::fs::write(
        &ws.plan,
        std::fs::read_to_string(&ws.plan)
            .unwrap()
            .replace("parallelism: 4", "parallelism: 1"),
    )
    .unwrap();
    let (_, plan) = ws.run_json(&["plan"]);
    // Blocks are copied oldest first: take the first, so nothing is copied before it.
    let first = &only(&plan)["blocks"][0];
    let ulid = first["ulid"].as_str().unwrap().to_string();
    let chunk_size = std::fs::metadata(ws.source.join(&ulid).join("chunks/000001"))
        .unwrap()
        .len();
    let rest = first["size"].as_u64().unwrap() - chunk_size;
    // The rest of the block (index, meta.json, tombstones) takes ~0.7 s after the chunk file
    // is complete: the kill lands in that window.
    let rate = format!("{}K", (rest * 10 / 7 / 1024).max(4));
    let src_chunk = std::fs::metadata(ws.source.join(&ulid).join("chunks/000001")).unwrap();
    let staged = ws
        .target()
        .join(".promigrate-staging")
        .join(&ulid)
        .join("chunks/000001");
    let mut child = ws
        .cmd(&["apply", "--yes", "--bwlimit", &rate])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the chunk file was never staged"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply finished before the kill"
        );
        if let Ok(m) = std::fs::metadata(&staged)
            && m.len() == src_chunk.len()
            && m.mtime() == src_chunk.mtime()
            && m.mtime_nsec() == src_chunk.mtime_nsec()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !ws.target().join(&ulid).exists(),
        "a half-staged block must not be published"
    );

    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        only(&v)["apply"]["resumed_files"].as_u64().unwrap() >= 1,
        "the complete staged chunk file was copied again: {v}"
    );
    assert!(
        leftovers(&ws.mount).is_empty(),
        "{:?}",
        leftovers(&ws.mount)
    );
    assert_eq!(ws.run(&["verify"]).0, 0);
}

/// Starts `apply --yes --bwlimit 100K` and waits until it is copying blocks.
fn slow_apply_under_way(ws: &Workspace) -> std::process::Child {
    let first = ws
        .cmd(&["apply", "--yes", "--bwlimit", "100K"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staging = ws.target().join(".promigrate-staging");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !staging.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "first apply never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    first
}

#[test]
fn a_second_apply_on_the_same_target_is_refused_while_one_runs() {
    let ws = Workspace::new();
    let mut first = slow_apply_under_way(&ws);
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first apply ended too early for this test"
    );
    // Its plan names the running apply as a blocker: refused (exit 1), nothing written.
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("an apply is in progress on this target"),
        "{out}"
    );
    assert!(out.contains("apply refused"), "{out}");
    assert!(first.wait().unwrap().success());
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "the lock file is not a difference:\n{out}");
}

/// Regression: while an apply runs, plan said "Plan OK" and verify read its half-written
/// state as "leftover of an interrupted apply". Both must name the running apply. And the
/// lock is the directory's own flock: no file of promigrate's is left behind.
#[test]
fn plan_and_verify_name_a_running_apply_and_no_lock_file_is_left() {
    let ws = Workspace::new();
    let mut first = slow_apply_under_way(&ws);
    let busy = format!(
        "an apply is in progress on this target (pid {}, since ",
        first.id()
    );
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&busy), "{out}");
    let (code, out, err) = ws.run(&["verify"]);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first apply ended too early for this test"
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&busy), "{out}");
    assert!(!out.contains("leftover"), "{out}");
    assert!(!out.contains("OK"), "{out}");
    assert!(first.wait().unwrap().success());
    assert!(
        !ws.target().join(".promigrate-lock").exists(),
        "a lock file was left in the data directory"
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// The target file's inode and mtime (ns).
fn ino_mtime(p: &std::path::Path) -> (u64, i128) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (
        m.ino(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    )
}

/// Issue 13 (item 13): a byte flipped in a target block file with its size and mtime kept is
/// a `*` for verify, but the quick check (size + mtime) sees nothing, so apply copied 0 B and
/// said "Next: verify": a loop. verify names the way out, and `apply --checksum` replaces
/// exactly that file (temp + fsync + rename, the source's mtime).
#[test]
fn issue_13_checksum_replaces_a_block_file_only_content_tells_apart() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let block = some_block(&ws.target());
    let ulid = block.file_name().unwrap().to_string_lossy().into_owned();
    let rel = format!("{ulid}/chunks/000001");
    let chunk = ws.target().join(&rel);
    let len = std::fs::metadata(&chunk).unwrap().len() as usize;
    flip_byte_keeping_mtime(&chunk, len / 2);
    let before = ino_mtime(&chunk);

    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("* {rel}  content differs")))
        .unwrap_or_else(|| panic!("no content difference for {rel}:\n{out}"));
    assert!(
        line.contains("the quick check (size+mtime) cannot see this")
            && line.contains(&format!(
                "run `promigrate apply -f {} --checksum`",
                ws.plan.display()
            )),
        "verify names the remedy: {line}"
    );

    // Without --checksum apply cannot see it (the loop the issue describes).
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(only(&v)["apply"]["copied_files"], 0, "{v}");

    // plan --checksum and apply --checksum --dry-run show it, and write nothing.
    let (code, v) = ws.run_json(&["plan", "--checksum"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        only(&v)["stats"]["checksum_differing_files"],
        1,
        "{}",
        only(&v)["stats"]
    );
    assert_eq!(only(&v)["checksum_differing"], serde_json::json!([rel]));
    let (code, out, _) = ws.run(&["apply", "--yes", "--checksum", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("update block {ulid} (1 file,")),
        "{out}"
    );
    assert!(out.contains(&format!("  * {rel}")), "{out}");
    assert_eq!(ino_mtime(&chunk), before, "a dry run wrote");

    let (code, v) = ws.run_json(&["apply", "--yes", "--checksum"]);
    assert_eq!(code, 0, "{v}");
    let stats = &only(&v)["plan"]["stats"];
    assert_eq!(only(&v)["apply"]["copied_files"], 1, "{v}");
    assert_eq!(stats["checksum_differing_files"], 1, "{stats}");
    // Every selected file is on the target with its size and mtime: all compared.
    assert_eq!(
        stats["checksum_compared_files"], stats["source_files"],
        "{stats}"
    );
    let b = only(&v)["plan"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["ulid"] == ulid.as_str())
        .unwrap();
    assert_eq!(b["state"], "differs");
    assert_eq!(b["copy"], serde_json::json!([rel]));
    let after = ino_mtime(&chunk);
    assert_ne!(
        after.0, before.0,
        "replaced by a rename, not rewritten in place"
    );
    assert_eq!(
        after.1,
        ino_mtime(&ws.source.join(&rel)).1,
        "the source's mtime"
    );
    assert_eq!(
        std::fs::read(&chunk).unwrap(),
        std::fs::read(ws.source.join(&rel)).unwrap()
    );
    assert_no_temp_files(&ws.mount, "after apply --checksum");
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");

    // The text report says what was compared; a rerun finds nothing left to replace.
    let (code, out, err) = ws.run(&["apply", "--yes", "--checksum"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "Compared by content (--checksum): {} files with equal size and mtime, 0 differ",
            stats["source_files"]
        )),
        "{out}"
    );
    assert!(out.contains("0 B in 0 files copied"), "{out}");
}

/// The same for a WAL segment: a presync with --checksum leaves WAL/head alone (it hashes
/// block files only); the final phase with --checksum replaces the segment.
#[test]
fn issue_13_checksum_in_the_final_phase_replaces_a_wal_segment() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let mut segs: Vec<String> = std::fs::read_dir(ws.target().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    segs.sort();
    let rel = format!("wal/{}", segs[0]);
    let seg = ws.target().join(&rel);
    flip_byte_keeping_mtime(&seg, 100);
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("* {rel}  content differs"))
                && l.contains("--checksum`")),
        "{out}"
    );

    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "presync", "--checksum"]);
    assert_eq!(code, 0, "{v}");
    let block_files: u64 = only(&v)["plan"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["files"].as_u64().unwrap())
        .sum();
    assert_eq!(
        only(&v)["plan"]["stats"]["checksum_compared_files"],
        block_files,
        "{v}"
    );
    assert_eq!(
        only(&v)["plan"]["stats"]["checksum_differing_files"],
        0,
        "{v}"
    );
    assert_eq!(only(&v)["apply"]["copied_files"], 0, "{v}");

    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final", "--checksum"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        only(&v)["plan"]["stats"]["checksum_differing_files"],
        1,
        "{v}"
    );
    assert_eq!(only(&v)["apply"]["copied_files"], 1, "{v}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        std::fs::read(ws.source.join(&rel)).unwrap()
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// Issue 13: source files dated before 1970 (negative seconds, with nanoseconds) get their
/// time on the target and then compare identical: the plan shows `=`, a rerun copies 0 B.
#[test]
fn files_dated_before_1970_compare_identical_after_apply() {
    let ws = Workspace::new();
    let block = some_block(&ws.source);
    let name = block.file_name().unwrap().to_string_lossy().into_owned();
    for f in ["tombstones", "meta.json"] {
        date_before_1970(&block.join(f));
    }
    assert_eq!(
        mtime_of(&block.join("tombstones")),
        (-315_619_200, 500_000_000)
    );
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    for f in ["tombstones", "meta.json"] {
        assert_eq!(
            mtime_of(&ws.target().join(&name).join(f)),
            (-315_619_200, 500_000_000),
            "{f}"
        );
    }
    let (code, text, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}\n{err}");
    assert!(text.contains(&format!("  = {name}")), "{text}");
    assert!(text.contains("To copy: 0 B in 0 files"), "{text}");
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(only(&v)["apply"]["copied_bytes"], 0, "{v}");
}

/// A filesystem mounted inside the target volume (here at the TSDB directory itself) is not
/// the volume: apply writes nothing into it and says why (openat2 with RESOLVE_NO_XDEV).
#[test]
fn a_filesystem_mounted_inside_the_volume_is_never_written() {
    let ws = Workspace::new();
    let inner = ws.target();
    std::fs::create_dir_all(&inner).unwrap();
    let _fs = Tmpfs::mount(&inner, "64m");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "a blocker: {out}");
    let named = format!(
        "{} is a mount point inside the target volume",
        inner.display()
    );
    assert!(out.contains(&named), "{out}");
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("apply refused"), "{out}");
    // verify's go is never given on such a layout, even once the data is there: the pod
    // that mounts the volume would not see it.
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&named), "{out}");
    assert_eq!(
        std::fs::read_dir(&inner).unwrap().count(),
        0,
        "written into the filesystem mounted inside the volume"
    );
    drop(_fs);

    // Deeper down too: a filesystem mounted at the copy's wal/.
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let wal = ws.target().join("wal");
    let _wal = Tmpfs::mount(&wal, "64m");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{} is a mount point inside the target volume",
            wal.display()
        )),
        "{out}"
    );
    assert_eq!(ws.run(&["verify"]).0, 1);
}
