#!/usr/bin/env bash
# bench-phases.sh - what the two phases cost: the presync (blocks, while the source runs)
# against the final phase (WAL/head with the source stopped: the downtime).
#
# Source: >= 2 GiB of real blocks (hard links into the cached bench set) plus a WAL of
# >= 256 MiB. The WAL segments are built from a real segment of the fixture: its 32 KiB pages
# repeated up to 128 MiB per segment (valid WAL format, every record CRC intact; the records
# repeat, which does not matter for copy timing). Each phase is timed until durable, cache
# dropped first. Measurements, not assertions.
set -euo pipefail
cd "$(dirname "$0")/.."

block_gib=2
wal_mib=256
out=target/bench/results-phases.md
while [ $# -gt 0 ]; do
	case "$1" in
	--block-gib) block_gib=$2; shift 2 ;;
	--wal-mib) wal_mib=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "usage: $0 [--block-gib N] [--wal-mib N] [--out FILE]" >&2; exit 2 ;;
	esac
done

cargo build --release --locked >&2
bash scripts/gen-tsdb.sh target/fixtures/tsdb --replicate-to target/fixtures/bench-blocks-4gib --gib 4 >&2
work=$(mktemp -d -p target)
bin="$work/promigrate"
ROOT=$PWD
. scripts/lib/target.sh
cp "$(release_bin)" "$bin"
trap 'rm -rf "$work"' EXIT
src="$work/source"
mkdir -p "$src/wal" "$src/chunks_head"

# Blocks: hard links, oldest first, until block_gib.
. scripts/bench-blocks.sh
link_blocks "$src" "$block_gib" >/dev/null
# WAL: 128 MiB segments of repeated real pages.
seg=target/fixtures/tsdb/wal/00000001
pages=$(($(stat -c %s "$seg") / 32768))
[ "$pages" -gt 0 ] || { echo "bench-phases.sh: $seg has no full page" >&2; exit 1; }
python3 - "$seg" "$src/wal" "$wal_mib" <<'PY'
import sys, os
seg, dst, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(seg, "rb").read()
data = data[: len(data) // 32768 * 32768]
per = 128 << 20
total, n = mib << 20, 0
while total > 0:
    size = min(per, total)
    with open(os.path.join(dst, "%08d" % n), "wb") as f:
        left = size
        while left > 0:
            chunk = data[: min(len(data), left)]
            f.write(chunk)
            left -= len(chunk)
    total -= size
    n += 1
PY
cp target/fixtures/tsdb/chunks_head/* "$src/chunks_head/"

mkdir -p "$work/pv"
cat >"$work/plan.yaml" <<YAML
apiVersion: promigrate/v1
kind: Migration
metadata: {name: bench-phases}
source: {path: $PWD/$src}
target:
  path: $PWD/$work/pv
  securityContext: {runAsUser: 1000, fsGroup: 2000}
YAML

drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || echo "bench-phases.sh: cannot drop caches" >&2; }
timed() {
	local s=$EPOCHREALTIME
	"$@" >/dev/null
	sync -f "$work/pv"
	python3 -c "print(round($EPOCHREALTIME - $s, 2))"
}
blocks_bytes=$(du -sb --exclude=wal --exclude=chunks_head "$src" | cut -f1)
wal_bytes=$(du -sb "$src/wal" "$src/chunks_head" | awk '{s+=$1} END {print s}')

drop
t_presync=$(timed "$bin" apply -f "$work/plan.yaml" --yes --phase presync --state-dir "$work/st")
drop
t_final=$(timed "$bin" apply -f "$work/plan.yaml" --yes --phase final --state-dir "$work/st")
"$bin" verify -f "$work/plan.yaml" --state-dir "$work/st" >/dev/null
rm -rf "$work/pv/prometheus-db" "$work/pv"/* "$work/cp"
drop
t_cp=$(timed cp -a "$src/wal" "$src/chunks_head" "$work/pv/")

mkdir -p "$(dirname "$out")"
python3 - "$blocks_bytes" "$wal_bytes" "$t_presync" "$t_final" "$t_cp" >"$out" <<'PY'
import sys
b, w, tp, tf, tc = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
g = lambda n: f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
print("## Two phases: presync against final\n")
print(f"Source: {g(b)} of real blocks and {g(w)} of WAL and head chunks; cache dropped before each run; timed until durable.\n")
print("| run | seconds |")
print("|---|---|")
print(f"| `apply --phase presync` (blocks) | {tp:.2f} |")
print(f"| `apply --phase final` (WAL/head, re-check of every block's meta.json and tombstones) | {tf:.2f} |")
print(f"| `cp -a` of wal/ and chunks_head/ alone, for reference | {tc:.2f} |")
print(f"\nThe final phase took {tf / tp:.2f}x the presync's time and {tf / tc:.2f}x a plain copy of the WAL/head.")
PY
cat "$out"
