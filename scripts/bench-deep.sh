#!/usr/bin/env bash
# bench-deep.sh - how close deep format checking is to just reading the data.
#
# On the cached >= N GiB of real blocks (the set scripts/bench.sh uses), interleaved rounds of:
#   cat, 1 stream   : every file read once, one after the other (find | xargs cat)
#   cat, 4 streams  : the same with 4 readers (xargs -P4), like promigrate's 4 workers
#   inspect --deep  : promigrate reading every byte and checking every CRC and reference
# each with the page cache dropped first (cold), then inspect --deep once more warm.
# Reports seconds, GiB/s and peak RSS. These are measurements, not assertions.
set -euo pipefail
cd "$(dirname "$0")/.."

gib=4
rounds=3
out=target/bench/results-deep.md
large=0
while [ $# -gt 0 ]; do
	case "$1" in
	--gib) gib=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	# Blocks written by a real Prometheus 3.16 with native-histogram chunks of 1-1.5 MiB
	# (scripts/gen-tsdb3.sh), replicated under fresh ULIDs: the chunks deep checks once
	# refused (issue 14).
	--large-chunks) large=1; shift ;;
	*) echo "usage: $0 [--gib N] [--rounds N] [--out FILE] [--large-chunks]" >&2; exit 2 ;;
	esac
done

cargo build --release --locked >&2
bin=$(mktemp)
ROOT=$PWD
. scripts/lib/target.sh
cp "$(release_bin)" "$bin"
chmod 755 "$bin"
trap 'rm -f "$bin"' EXIT
if [ "$large" = 1 ]; then
	data=target/fixtures/bench-blocks3-${gib}gib
	if [ ! -e "$data.complete" ]; then
		bash scripts/gen-tsdb3.sh target/fixtures/tsdb3 >&2
		rm -rf "$data" && mkdir -p "$data"
		# Every block of the 3.x fixture, round robin under fresh ULIDs, to N GiB.
		python3 - target/fixtures/tsdb3 "$data" "$gib" <<'PY'
import os, re, shutil, sys, time, random
src, dst, gib = sys.argv[1], sys.argv[2], float(sys.argv[3])
alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
def ulid():
    t = int(time.time() * 1000); s = ""
    for _ in range(10): s = alphabet[t % 32] + s; t //= 32
    return s + "".join(random.choice(alphabet) for _ in range(16))
blocks = [b for b in sorted(os.listdir(src)) if os.path.exists(os.path.join(src, b, "meta.json"))]
size = lambda p: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)
total, target = 0, int(gib * 2**30)
while total < target:
    for b in blocks:
        u = ulid(); d = os.path.join(dst, u)
        shutil.copytree(os.path.join(src, b), d)
        m = os.path.join(d, "meta.json"); t = open(m).read()
        open(m, "w").write(re.sub(r'("ulid"\s*:\s*")' + b + '"', lambda x: x.group(1) + u + '"', t, count=1))
        total += size(d)
        if total >= target: break
print(total)
PY
		touch "$data.complete"
	fi
else
	data=target/fixtures/bench-blocks-${gib}gib
	bash scripts/gen-tsdb.sh target/fixtures/tsdb --replicate-to "$data" --gib "$gib" >&2
fi
bytes=$(du -sb "$data" | cut -f1)

drop_cache() {
	sync
	if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
		echo "bench-deep.sh: cannot drop the page cache (not root?): cold numbers are warm" >&2
	fi
}
# time_it LABEL CMD... -> prints "LABEL seconds maxrss_kib"
time_it() {
	local label=$1
	shift
	local tf
	tf=$(mktemp)
	local s=$EPOCHREALTIME
	/usr/bin/time -f %M -o "$tf" "$@" >/dev/null
	local e=$EPOCHREALTIME
	echo "$label $(python3 -c "print(round($e - $s, 3))") $(cat "$tf")"
	rm -f "$tf"
}

results=$(mktemp)
for r in $(seq 1 "$rounds"); do
	drop_cache
	time_it "r$r cat-1" sh -c "find '$data' -type f -print0 | xargs -0 cat" >>"$results"
	drop_cache
	time_it "r$r cat-4" sh -c "find '$data' -type f -print0 | xargs -0 -P4 -n 64 cat" >>"$results"
	drop_cache
	time_it "r$r deep-cold" "$bin" inspect --deep "$data" >>"$results"
	time_it "r$r deep-warm" "$bin" inspect --deep "$data" >>"$results"
	echo "bench-deep.sh: round $r done" >&2
done

mkdir -p "$(dirname "$out")"
python3 - "$results" "$bytes" "$rounds" >"$out" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2]); gib = size / 2**30
by = {}
for r, kind, secs, rss in rows:
    by.setdefault(kind, []).append((float(secs), int(rss)))
print("## Deep format checks against plain reading\n")
print(f"Data: {gib:.2f} GiB of real Prometheus blocks; {sys.argv[3]} interleaved rounds; page cache dropped before every cold run.\n")
print("| run | median s | per round s | GiB/s (median) | peak RSS MiB |")
print("|---|---|---|---|---|")
names = {"cat-1": "cat, 1 stream (cold)", "cat-4": "cat, 4 streams (cold)", "deep-cold": "inspect --deep (cold)", "deep-warm": "inspect --deep (warm)"}
for k in ["cat-1", "cat-4", "deep-cold", "deep-warm"]:
    v = by.get(k, [])
    if not v:
        continue
    m = statistics.median(s for s, _ in v)
    print(f"| {names[k]} | {m:.2f} | {', '.join(f'{s:.2f}' for s, _ in v)} | {gib / m:.2f} | {max(r for _, r in v) / 1024:.1f} |")
d = statistics.median(s for s, _ in by["deep-cold"])
print(f"\ninspect --deep (cold) takes {d / statistics.median(s for s, _ in by['cat-1']):.2f}x the time of one cat and {d / statistics.median(s for s, _ in by['cat-4']):.2f}x that of four.")
PY
cat "$out"
