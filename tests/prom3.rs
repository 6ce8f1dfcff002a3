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
