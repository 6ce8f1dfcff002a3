#!/usr/bin/env bash
# make demo: plan -> apply -> verify of a small real TSDB (promtool blocks compacted by a real
# prometheus, with tombstones, WAL and head chunks) into a temporary "volume", then a real
# prometheus opened on the copy answers a query. Owner is the current user so it runs without
# root; in production runAsUser/fsGroup come from the pod's securityContext.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
. scripts/lib/target.sh
bin=$(release_bin)
[ -x "$bin" ] || { echo "demo: $bin not found: run make build first (make demo does)" >&2; exit 1; }
data=target/fixtures/tsdb
work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
	if [ -n "${prom_pid:-}" ]; then kill "$prom_pid" 2>/dev/null || true; wait "$prom_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

bash scripts/gen-tsdb.sh "$data" >&2
mkdir -p "$work/pv"
cat >"$work/demo.yaml" <<YAML
apiVersion: promigrate/v1
kind: Migration
metadata:
  name: demo
source:
  path: $PWD/$data
target:
  path: $work/pv
  subPath: prometheus-db
  securityContext:
    runAsUser: $(id -u)
    fsGroup: $(id -g)
transfer:
  bwlimit: 20M
  parallelism: 4
YAML

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
step promigrate inspect "$data"
"$bin" inspect "$data"
step promigrate plan -f demo.yaml
"$bin" plan -f "$work/demo.yaml"
step promigrate apply -f demo.yaml --phase presync --yes "   # blocks, while the source may run"
"$bin" apply -f "$work/demo.yaml" --phase presync --yes --state-dir "$work/migrations" | tail -4
step promigrate apply -f demo.yaml --phase final --yes "   # the source is stopped: WAL and head"
# Not root, promigrate cannot see other users' processes, so it cannot tell that no server
# runs on the demo data (none does: this script made it); it says so with --source-stopped.
stopped=()
[ "$(id -u)" -eq 0 ] || stopped=(--source-stopped)
"$bin" apply -f "$work/demo.yaml" --phase final --yes "${stopped[@]}" --state-dir "$work/migrations" | tail -4
step promigrate verify -f demo.yaml --level deep
"$bin" verify -f "$work/demo.yaml" --level deep --state-dir "$work/migrations"
step promigrate apply -f demo.yaml --yes "   # again: nothing to do"
"$bin" apply -f "$work/demo.yaml" --yes "${stopped[@]}" --state-dir "$work/migrations" | tail -3

step "prometheus --storage.tsdb.path=<target>   # open the copy and query it"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'global:\n  scrape_interval: 1h\n' >"$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/pv/prometheus-db" \
	--web.listen-address="127.0.0.1:$port" --storage.tsdb.retention.time=3650d >"$work/prometheus.log" 2>&1 &
prom_pid=$!
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$port/api/v1/query" --data-urlencode 'query=count(count_over_time(demo_requests_total[7d]))' \
	| python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print("series of demo_requests_total answered by the copy:", r[0]["value"][1] if r else 0)'
echo
echo "Run records: $work/migrations/demo/ (removed with the demo's temp dir)"
