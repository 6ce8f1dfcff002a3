//! Prometheus 3.x end to end (issue 14): plan → apply → verify of a TSDB written by a real
//! Prometheus 3.16 (scripts/gen-tsdb3.sh: native histograms with chunks of 1 MiB or more,
//! out-of-order blocks and WBL, zstd WAL, start-timestamp chunks, exemplars, the chunk
//! snapshot), then a real Prometheus 3 started on the target as runAsUser:fsGroup must answer
//! like one started on a copy of the source (`assert_prom3_answers_alike`): float,
//! native-histogram and out-of-order queries, the tombstoned range, range queries, and the
//! exemplars (which only the chunk snapshot and the WAL hold).

mod common;

use common::*;

#[test]
fn prometheus3_tsdb_migrates_byte_exact_and_answers_like_the_source() {
    let ws = Workspace::from_fixture(prom3_fixture(), "");
    let (code, plan) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["ok"], true, "{plan}");

    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "apply failed: {err}");
    let (code, out, err) = ws.run(&["verify", "--level", "checksum"]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");
    assert!(out.contains("OK: the target matches the source."), "{out}");
    // Every file but the ones promigrate does not copy (`lock`, `queries.active`).
    let mut src = content_hashes(&ws.source);
    src.retain(|k, _| k != "lock" && k != "queries.active");
    let dst = content_hashes(&ws.target());
    assert_eq!(src, dst, "the copy is not byte-equal");
    for want in ["chunk_snapshot.", "wbl/", "chunks_head/", "wal/checkpoint."] {
        assert!(
            dst.keys().any(|k| k.starts_with(want)),
            "no {want} in the copy: {:?}",
            dst.keys().collect::<Vec<_>>()
        );
    }

    let work = ws.dir.path().join("servers");
    let src_copy = ws.dir.path().join("source-copy");
    copy_tree(&ws.source, &src_copy);
    let flavor = PromFlavor::prom3();
    let reference = PromServer::start_flavor(&flavor, &src_copy, &work.join("ref"), None);
    let migrated = PromServer::start_flavor(
        &flavor,
        &ws.target(),
        &work.join("new"),
        Some((RUN_AS_USER, FS_GROUP)),
    );
    assert_prom3_answers_alike(&reference, &migrated, &ws.target(), time_span(&ws.source));
}

/// The segment files of a Prometheus 3 copy that hold a chunk of at least 1 MiB followed by
/// another chunk: (path, the later chunk's data offset).
fn after_a_large_chunk(target: &std::path::Path) -> Vec<(std::path::PathBuf, usize)> {
    let mut found = Vec::new();
    for (rel, e) in files_below(target) {
        let head = rel.starts_with("chunks_head/");
        if !(head || rel.contains("/chunks/")) {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let chunks = segment_chunks(&bytes, head);
        if let Some(i) = chunks.iter().position(|c| c.2 >= 1 << 20)
            && let Some(next) = chunks.get(i + 1)
        {
            found.push((e.path().to_path_buf(), next.1 + next.2 / 2));
        }
    }
    found
}

/// Regression (issue 14, defects 1 and 2): chunks of 1 MiB or more, which a large native
/// histogram gives and Prometheus 3 reads without error, were reported as damage (verify
/// said "do not cut over" on a good copy), and nothing after them in the same file was
/// checked. A healthy 3.x TSDB passes `verify --level deep`; a flipped byte in a chunk after
/// a large one is found.
#[test]
fn deep_verify_passes_large_native_histogram_chunks_and_checks_what_follows() {
    let ws = Workspace::from_fixture(prom3_fixture(), "");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("its format checks pass"), "{out}");
    let (code, out, _) = common::run({
        let mut c = promigrate();
        c.args(["inspect", "--deep"]).arg(ws.target());
        c
    });
    assert_eq!(code, 0, "{out}");

    let damaged = after_a_large_chunk(&ws.target());
    assert!(
        !damaged.is_empty(),
        "the fixture has no chunk after a 1 MiB one"
    );
    let (path, at) = &damaged[0];
    flip_byte_keeping_mtime(path, *at);
    let rel = path
        .strip_prefix(ws.target())
        .unwrap()
        .display()
        .to_string();
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("! {rel}")) && l.contains("does not match")),
        "the damaged chunk after the large one is not reported: {out}"
    );
}

/// Regression (issue 14, defect 3): `chunk_snapshot.*` was never format-checked. A damaged
/// one is dropped by Prometheus 3 at start, which replays the WAL instead; the report says
/// that, and `inspect` lists the snapshot.
#[test]
fn a_damaged_chunk_snapshot_is_found_and_described_as_prometheus_3_handles_it() {
    let ws = Workspace::from_fixture(prom3_fixture(), "");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let (code, out, _) = common::run({
        let mut c = promigrate();
        c.args(["inspect"]).arg(ws.target());
        c
    });
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chunk snapshot") && out.contains("loaded at startup"),
        "{out}"
    );
    let snap = std::fs::read_dir(ws.target())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("chunk_snapshot.")
        })
        .expect("a chunk snapshot");
    let seg = snap.join("00000000");
    // Inside the first record's data (after its 7-byte fragment header).
    flip_byte_keeping_mtime(&seg, 20);
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("chunk_snapshot.") && l.starts_with('!'))
        .unwrap_or_else(|| panic!("the damaged snapshot is not reported: {out}"));
    assert!(line.contains("drops the chunk snapshot"), "{line}");
    assert!(line.contains("replays the WAL"), "{line}");
    // What the report says is what Prometheus 3 does: it starts, without the snapshot.
    let mut server = PromServer::start_flavor(
        &PromFlavor::prom3(),
        &ws.target(),
        &ws.dir.path().join("prom"),
        None,
    );
    let log = server.log_text();
    server.stop();
    assert!(!log.contains("chunk snapshot loaded"), "{log}");
    assert!(log.contains("Failed to load chunk snapshot"), "{log}");
}

/// Issue 14: a damaged out-of-order head chunk is described as Prometheus 3 handles it (it
/// deletes the head chunk files from there on and replays the WAL and WBL), not as lost data;
/// and Prometheus 3 does start on it.
#[test]
fn a_damaged_out_of_order_head_chunk_is_described_as_a_replay() {
    let ws = Workspace::from_fixture(prom3_fixture(), "");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let ooo = files_below(&ws.target())
        .filter(|(rel, _)| rel.starts_with("chunks_head/"))
        .find_map(|(_, e)| {
            let bytes = std::fs::read(e.path()).unwrap();
            segment_chunks(&bytes, true)
                .into_iter()
                .find(|c| c.3 & 0x80 != 0)
                .map(|c| (e.path().to_path_buf(), c.1 + c.2 / 2))
        })
        .expect("an out-of-order head chunk in the fixture");
    flip_byte_keeping_mtime(&ooo.0, ooo.1);
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("! chunks_head/"))
        .unwrap_or_else(|| panic!("not reported: {out}"));
    assert!(line.contains("replays the WAL and WBL"), "{line}");
    assert!(line.contains("samples survive"), "{line}");
    let mut server = PromServer::start_flavor(
        &PromFlavor::prom3(),
        &ws.target(),
        &ws.dir.path().join("prom"),
        None,
    );
    server.stop();
}
