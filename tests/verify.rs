//! `verify` catches what a copy can get wrong: a modified file (same size and mtime, so only
//! the content hash sees it), a missing file, an extra file, a changed meta.json field, and
//! wrong ownership or mode. Each is reported with its sigil and path, and exits 1.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn applied() -> Workspace {
    let ws = Workspace::new();
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "a fresh copy must verify:\n{out}");
    ws
}

fn rel(ws: &Workspace, p: &Path) -> String {
    p.strip_prefix(ws.target())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn flipped_byte_with_same_size_and_mtime_is_found_by_checksum_only() {
    let ws = applied();
    let chunk = some_block(&ws.target()).join("chunks/000001");
    let len = std::fs::metadata(&chunk).unwrap().len() as usize;
    // With the mtime put back, the quick check (size + mtime) cannot see the change.
    flip_byte_keeping_mtime(&chunk, len / 2);

    let (code, out, _) = ws.run(&["verify", "--level", "meta"]);
    assert_eq!(code, 0, "meta level compares no content:\n{out}");
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("* {}  content differs", rel(&ws, &chunk))),
        "{out}"
    );
    assert!(out.contains("Do not cut over"), "{out}");
}

#[test]
fn missing_and_extra_files_are_named() {
    let ws = applied();
    let wal = ws.target().join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    std::fs::remove_file(&segs[0]).unwrap();
    let extra = some_block(&ws.target()).join("chunks/000099");
    std::fs::write(&extra, b"not from the source").unwrap();

    let (code, v) = ws.run_json(&["verify"]);
    assert_eq!(code, 1);
    let diffs = only(&v)["differences"].as_array().unwrap();
    let has = |sigil: &str, path: &str| {
        diffs
            .iter()
            .any(|d| d["sigil"] == sigil && d["path"] == path)
    };
    assert!(has("-", &rel(&ws, &segs[0])), "{v}");
    assert!(has("+", &rel(&ws, &extra)), "{v}");
}

#[test]
fn meta_json_is_compared_field_by_field() {
    let ws = applied();
    let meta = some_block(&ws.target()).join("meta.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let n = doc["stats"]["numSamples"].as_u64().unwrap();
    doc["stats"]["numSamples"] = serde_json::json!(n + 1);
    std::fs::write(&meta, serde_json::to_string(&doc).unwrap()).unwrap();
    let (code, out, _) = ws.run(&["verify", "--level", "meta"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("stats.numSamples: {n} → {}", n + 1)),
        "{out}"
    );
}

#[test]
fn wrong_owner_and_mode_are_found() {
    let ws = applied();
    let idx = some_block(&ws.target()).join("index");
    std::os::unix::fs::chown(&idx, Some(0), Some(0)).unwrap();
    let wal = ws.target().join("wal");
    std::fs::set_permissions(&wal, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, out, _) = ws.run(&["verify", "--level", "meta"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "* {}  owner 0:0, want {RUN_AS_USER}:{FS_GROUP}",
            rel(&ws, &idx)
        )),
        "{out}"
    );
    assert!(out.contains("* wal  mode 0755, want 2775"), "{out}");
    // apply repairs ownership without copying anything.
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0);
    assert_eq!(only(&v)["apply"]["copied_files"], 0);
    assert!(only(&v)["apply"]["ownership_fixed"].as_u64().unwrap() >= 2);
    assert_eq!(std::fs::metadata(&idx).unwrap().uid(), RUN_AS_USER);
    let (code, _, _) = ws.run(&["verify"]);
    assert_eq!(code, 0);
}

#[test]
fn verify_writes_a_run_record() {
    let ws = applied();
    let dir = ws.state.join("test-migration");
    let records: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        records.iter().any(|r| r.ends_with("-apply.json")),
        "{records:?}"
    );
    let verify = records
        .iter()
        .find(|r| r.ends_with("-verify.json"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(verify)).unwrap()).unwrap();
    assert_eq!(v["command"], "verify");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["report"]["ok"], true);
}

/// Issue 18: Ctrl-C stops verify's hashing within a chunk, not after the file it is in (a
/// 16 GiB sparse file here: hashed whole by this debug build, minutes, far longer than this
/// test waits).
#[test]
fn ctrl_c_stops_verify_in_the_middle_of_a_large_file() {
    let ws = Workspace::new();
    let (code, out, err) = ws.run(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{out}{err}");
    big_sparse_segment(&ws);
    let mut child = ws
        .cmd(&["verify", "--level", "checksum"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it get into the big file.
    std::thread::sleep(std::time::Duration::from_secs(2));
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let start = std::time::Instant::now();
    let status = ended_within(&mut child, std::time::Duration::from_secs(60), || {
        "verify kept hashing for 60 s after SIGINT".to_string()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    eprintln!("ended {:?} after SIGINT", start.elapsed());
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("interrupted"), "{err}");
}

/// The verify that ends an apply takes a source file's hash from the bytes the copy sent
/// (`promigrate::hash::Sent`) instead of reading the file again, only while the file has
/// the size and mtime it had then; the target is read back every time, so a target damaged
/// after the copy is still found.
#[test]
fn hashes_taken_while_copying_stand_for_the_source_only_while_it_is_unchanged() {
    use promigrate::fsutil::MTime;
    use promigrate::hash::Sent;
    use promigrate::verify::VerifyLevel;
    let ws = applied();
    let m = promigrate::plan::file::load(&ws.plan, &promigrate::plan::file::offline).unwrap();
    let verify = |sent: &Sent| {
        let never = std::sync::atomic::AtomicBool::new(false);
        let mut reports = promigrate::verify::run(
            &m,
            VerifyLevel::Checksum,
            &|_| Box::new(promigrate::progress::Hidden),
            &never,
            Some(sent),
        )
        .unwrap();
        reports.remove(0)
    };
    let chunk_rel = format!(
        "{}/chunks/000001",
        some_block(&ws.target())
            .file_name()
            .unwrap()
            .to_string_lossy()
    );
    let src = ws.source.join(&chunk_rel);
    let st = std::fs::metadata(&src).unwrap();
    let now = MTime {
        sec: st.mtime(),
        nsec: st.mtime_nsec(),
    };
    let right = xxhash_rust::xxh3::xxh3_128(&std::fs::read(&src).unwrap());
    let content_differs = |r: &promigrate::verify::VerifyReport| {
        r.differences
            .iter()
            .any(|d| *d.path == *chunk_rel && d.detail.contains("content differs"))
    };

    // A hash for the file as it is now is used: a wrong one is a difference (so it was
    // taken, not the file read again), and the source file is not read.
    let wrong = Sent::default();
    wrong.record(&chunk_rel, right ^ 1, st.len(), now);
    let r = verify(&wrong);
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.hashed_while_copied, 1);
    assert!(content_differs(&r), "{:?}", r.differences);
    assert_eq!(r.hashed_bytes, 2 * r.checked_bytes - st.len());

    // For another mtime (the file touched since), or another size, it is not used.
    for (size, mtime) in [
        (
            st.len(),
            MTime {
                sec: now.sec - 1,
                ..now
            },
        ),
        (st.len() + 1, now),
    ] {
        let stale = Sent::default();
        stale.record(&chunk_rel, right ^ 1, size, mtime);
        let r = verify(&stale);
        assert!(r.ok, "{:?}", r.differences);
        assert_eq!(r.hashed_while_copied, 0);
        assert_eq!(r.hashed_bytes, 2 * r.checked_bytes);
    }

    // The right hash, and the target damaged after the copy (size and mtime kept): found,
    // because the target side is read back.
    let good = Sent::default();
    good.record(&chunk_rel, right, st.len(), now);
    assert!(verify(&good).ok);
    let copy = ws.target().join(&chunk_rel);
    flip_byte_keeping_mtime(&copy, st.len() as usize / 2);
    let r = verify(&good);
    assert!(!r.ok);
    assert!(content_differs(&r), "{:?}", r.differences);
}
