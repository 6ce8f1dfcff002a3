//! Prometheus 3.x end to end (issue 14): plan → apply → verify of a TSDB written by a real
//! Prometheus 3.16 (scripts/gen-tsdb3.sh: native histograms with chunks of 1 MiB or more,
//! out-of-order blocks and WBL, zstd WAL, start-timestamp chunks, exemplars, the chunk
//! snapshot), then a real Prometheus 3 started on the target as runAsUser:fsGroup must answer
//! like one started on a copy of the source: float, native-histogram and out-of-order
//! queries, and the exemplars (which only the chunk snapshot and the WAL hold).

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

    // The span to query: the blocks (promtool's, hours old, and the server's) and the head,
    // which ends less than a few minutes after the last block.
    let (_, inspect, _) = common::run({
        let mut c = promigrate();
        c.args(["inspect", "--output", "json"]).arg(&ws.source);
        c
    });
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let (min_s, max_s) = (
        inspect["min_time"].as_i64().unwrap() / 1000,
        inspect["max_time"].as_i64().unwrap() / 1000,
    );
    let at = max_s + 600;
    let window = format!("{}s", at - min_s + 60);

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
    for s in [&reference, &migrated] {
        let log = s.log_text();
        assert!(log.contains("chunk snapshot loaded"), "{log}");
        assert!(!log.contains("level=ERROR"), "{log}");
    }

    let instant = |s: &PromServer, q: &str| {
        s.api(
            "query",
            &[("query", q.to_string()), ("time", at.to_string())],
        )
    };
    // Every series (last_over_time keeps the name), then every sample of every metric:
    // blocks, out-of-order blocks, head, WBL.
    let names = reference.api("label/__name__/values", &[]);
    assert_eq!(names, migrated.api("label/__name__/values", &[]));
    let names: Vec<String> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for want in [
        "feed_huge_histogram",
        "feed_ooo_histogram",
        "feed_rw_ratio",
        "backfill_value",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want}: {names:?}");
    }
    let mut queries = vec![format!(
        "count(last_over_time({{__name__=~\".+\"}}[{window}]))"
    )];
    queries.extend(
        names
            .iter()
            .map(|n| format!("sum(count_over_time({n}[{window}]))")),
    );
    queries.extend([
        format!("count_over_time(backfill_value[{window}])"),
        format!("max_over_time(feed_rw_events_total[{window}])"),
        format!("sum(sum_over_time(feed_ooo_value[{window}]))"),
        format!("histogram_count(sum_over_time(feed_huge_histogram[{window}]))"),
        format!("histogram_sum(sum_over_time(feed_ooo_float_histogram[{window}]))"),
    ]);
    for q in &queries {
        let (a, b) = (instant(&reference, q), instant(&migrated, q));
        assert!(
            !a["result"].as_array().unwrap().is_empty(),
            "query returned nothing on the reference: {q}"
        );
        assert_eq!(a, b, "query differs: {q}");
    }
    let series = instant(&reference, &queries[0])["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(series > 100, "only {series} series");

    // Native histograms point by point over the span Prometheus 3 wrote (blocks and head).
    for q in [
        "histogram_count(rate(feed_huge_histogram[5m]))",
        "histogram_quantile(0.9, rate(feed_request_duration_seconds[30s]))",
        "histogram_sum(feed_rw_ratio)",
        "histogram_count(feed:request_duration_seconds:rate15s)",
    ] {
        let params = [
            ("query", q.to_string()),
            ("start", (max_s - 900).to_string()),
            ("end", at.to_string()),
            ("step", "5".to_string()),
        ];
        let (a, b) = (
            reference.api("query_range", &params),
            migrated.api("query_range", &params),
        );
        assert!(
            !a["result"].as_array().unwrap().is_empty(),
            "query returned nothing on the reference: {q}"
        );
        assert_eq!(a, b, "query_range differs: {q}");
    }

    // Exemplars: held by the chunk snapshot (and the WAL) only.
    let params = [
        ("query", "{job=\"feed\"}".to_string()),
        ("start", min_s.to_string()),
        ("end", at.to_string()),
    ];
    let (a, b) = (
        reference.api("query_exemplars", &params),
        migrated.api("query_exemplars", &params),
    );
    assert!(!a.as_array().unwrap().is_empty(), "no exemplars: {a}");
    assert_eq!(a, b, "exemplars differ");

    assert!(
        !migrated.log_text().contains("permission denied"),
        "{}",
        migrated.log_text()
    );
}

/// The chunks of one segment (block chunk file or head chunk file): (offset of the chunk,
/// offset of its data, data length, encoding byte).
fn chunks_of(bytes: &[u8], head: bool) -> Vec<(usize, usize, usize, u8)> {
    fn uvarint(b: &[u8]) -> (u64, usize) {
        let (mut v, mut shift) = (0u64, 0);
        for (i, &x) in b.iter().enumerate() {
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return (v, i + 1);
            }
            shift += 7;
        }
        panic!("bad uvarint")
    }
    let mut out = Vec::new();
    let mut off = 8;
    while off + 30 < bytes.len() {
        let start = off;
        let enc = if head {
            if bytes[off..off + 24].iter().all(|&b| b == 0) {
                break;
            }
            off += 24;
            let e = bytes[off];
            off += 1;
            e
        } else {
            0
        };
        let (len, n) = uvarint(&bytes[off..]);
        if len == 0 {
            break;
        }
        off += n;
        let enc = if head {
            enc
        } else {
            off += 1;
            bytes[off - 1]
        };
        out.push((start, off, len as usize, enc));
        off += len as usize + 4;
    }
    out
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
        let chunks = chunks_of(&bytes, head);
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
            chunks_of(&bytes, true)
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
