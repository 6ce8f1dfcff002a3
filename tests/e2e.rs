//! End to end on real data: plan → apply → verify of a real TSDB (promtool blocks compacted
//! by a real prometheus, with tombstones, WAL and head chunks), then a real `prometheus`
//! started on the target as runAsUser:fsGroup must answer PromQL exactly like a server
//! started on a copy of the source: block data, the tombstoned range, and the WAL/head.

mod common;

use common::*;

#[test]
fn migrated_copy_answers_like_the_source() {
    let ws = Workspace::new();
    let (code, plan) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["ok"], true);
    assert!(only(&plan)["stats"]["copy_files"].as_u64().unwrap() > 10);

    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "apply failed: {err}");
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "verify failed:\n{out}");
    assert!(out.contains("OK: the target matches the source."));

    // The time span to query: from the oldest block to now (covers the WAL written when the
    // fixture was made).
    let (min_s, max_s) = time_span(&ws.source);
    let now = jiff::Timestamp::now().as_second();
    let window = now - min_s + 3600;

    let work = ws.dir.path().join("servers");
    let src_copy = ws.dir.path().join("source-copy");
    copy_tree(&ws.source, &src_copy);
    let reference = PromServer::start(&src_copy, &work.join("ref"), None);
    let migrated = PromServer::start(
        &ws.target(),
        &work.join("new"),
        Some((RUN_AS_USER, FS_GROUP)),
    );

    // Every metric name, then every sample of every series of each: blocks and head together.
    let names = reference.same_metric_names(&migrated);
    assert!(
        names.len() > 10 && names.contains(&"demo_requests_total".to_string()),
        "{names:?}"
    );
    let mut queries: Vec<String> = names
        .iter()
        .map(|n| format!("sum(count_over_time({n}[{window}s]))"))
        .collect();
    queries.extend([
        format!("sum by (instance) (count_over_time(demo_temperature_celsius[{window}s]))"),
        // Head/WAL only: samples the self-scrape wrote while the fixture was made.
        format!("count_over_time(up[{window}s])"),
        format!("max_over_time(demo_requests_total[{window}s])"),
    ]);
    assert_same_answers(&reference, &migrated, &queries, now);

    // The tombstoned range is really in effect (so the comparison above covers it).
    let q = format!("sum by (instance) (count_over_time(demo_temperature_celsius[{window}s]))");
    assert_deleted_range_in_effect(&migrated, &q, now, "node-00:9100", "node-01:9100");

    // A range query over the block span, point by point.
    assert_same_range(
        &reference,
        &migrated,
        "sum(rate(demo_requests_total[5m]))",
        (min_s, max_s),
        300,
    );

    // Prometheus as runAsUser:fsGroup created its runtime files on the target.
    assert_runs_on_target(&migrated, &ws.target());
}
