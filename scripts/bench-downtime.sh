#!/usr/bin/env bash
# bench-downtime.sh - the downtime of an in-cluster migration end to end, as the runbook lives
# it, on the real test node (scripts/test-node.sh): a live Prometheus 3 on 1 GiB of real blocks
# (the gen-tsdb.sh 1 GiB fixture) here, a StatefulSet of the real Prometheus image on a claim of
# a local PV, reached through a receiver pod. Per round: presync while the source runs, then
# from the source's SIGTERM: source exited, the final apply (with `--verify-level deep`: its
# copy, its deep verify and the scale-up), the StatefulSet's pod Ready, the first sample it
# ingests (its own scrape every second, by the sample's timestamp). The page cache is dropped
# before the SIGTERM. The driver is the static release build (`make static`), the same binary
# the receiver pod runs.
#
# It runs the #[ignore]d test `downtime_end_to_end` of tests/incluster_e2e.rs once per round
# (a fresh node each) and writes the medians to target/bench/results-downtime.md.
# Measurements, not assertions. Needs root (the test node).
#
# Usage: scripts/bench-downtime.sh [--rounds N] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
out=target/bench/results-downtime.md
while [ $# -gt 0 ]; do
	case "$1" in
	--rounds) rounds=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "usage: $0 [--rounds N] [--out FILE]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench-downtime.sh needs root (the test node)" >&2; exit 1; }

CARGO=${CARGO:-cargo}
bash scripts/prometheus3.sh build >/dev/null
bash scripts/test-node.sh build >/dev/null
# The static build, named for the test (a `make static` run from inside `cargo test` sees
# another environment and builds it again).
if [ -z "${PROMIGRATE_RECEIVER_BINARY:-}" ]; then
	static=$(make -s static | tail -n 1)
	PROMIGRATE_RECEIVER_BINARY=$(realpath "$static")
fi
export PROMIGRATE_RECEIVER_BINARY
bash scripts/gen-tsdb.sh target/fixtures/tsdb --replicate-to target/fixtures/blocks-1gib --gib 1 >&2
# The test binary, built once (the rounds run it directly).
test_bin=$($CARGO test --locked --test incluster_e2e --no-run --message-format=json |
	python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "incluster_e2e":
        print(m["executable"])' | tail -n 1)
[ -x "$test_bin" ] || { echo "bench-downtime.sh: no test binary for tests/incluster_e2e.rs" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
for i in $(seq 1 "$rounds"); do
	echo "bench-downtime: round $i of $rounds" >&2
	("$test_bin" --ignored --exact downtime_end_to_end --nocapture --test-threads=1) |
		tee >(cat >&2) | grep -o 'DOWNTIME .*' >>"$lines"
done

python3 - "$lines" "$out" "$rounds" <<'EOF'
import statistics, sys, platform, os
lines, out, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
runs = []
for l in open(lines):
    runs.append(dict(kv.split("=") for kv in l.split()[1:]))
keys = ["sigterm_to_exit", "final_start_to_copy", "final_copy", "final_verify_and_scale",
        "final_total", "scale_to_ready", "ready_to_first_sample", "total"]
what = {
    "sigterm_to_exit": "SIGTERM → source exited",
    "final_start_to_copy": "final apply: start → copying (plan, receiver pod, upload, quiesce)",
    "final_copy": "final apply: copy (WAL, head, new blocks)",
    "final_verify_and_scale": "final apply: deep verify → StatefulSet scaled back",
    "final_total": "final apply in all (start → exit)",
    "scale_to_ready": "scaled back → the StatefulSet's pod Ready",
    "ready_to_first_sample": "Ready → first sample ingested (1 s scrape)",
    "total": "SIGTERM → first sample ingested",
}
with open(out, "w") as f:
    f.write(f"# Downtime end to end ({len(runs)} of {rounds} rounds, {os.cpu_count()} CPUs, {platform.machine()})\n\n")
    f.write(f"source: {runs[0]['source_gib'] if runs else '?'} GiB; presync (not downtime), median: "
            f"{statistics.median(float(r['presync']) for r in runs) if runs else 0:.1f} s\n\n")
    f.write("| step | median s | min s | max s |\n|---|---|---|---|\n")
    for k in keys:
        v = [float(r[k]) for r in runs]
        if v:
            f.write(f"| {what[k]} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |\n")
    f.write("\nRounds:\n\n```\n" + "".join(open(lines).readlines()) + "```\n")
print(open(out).read())
EOF
