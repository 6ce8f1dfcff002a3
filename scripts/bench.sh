#!/usr/bin/env bash
#
# bench.sh - measure promigrate against cp -a and rsync -a on real
# Prometheus blocks, and write the results as Markdown.
#
# The numbers this script prints are MEASUREMENTS, NOT ASSERTIONS. The targets
# from the issue are shown next to the numbers for reference only. The script
# exits 0 whether they are met or not; it exits non-zero only if a tool fails
# or a copy comes out wrong.
#
# Method
#   * Data: `scripts/gen-tsdb.sh target/fixtures/tsdb --replicate-to
#     target/fixtures/bench-blocks-<N>gib --gib N` makes at least N GiB of
#     real Prometheus blocks (real promtool blocks copied under fresh ULIDs).
#     The data is cached there between runs; only the first run builds it.
#   * Binary: `cargo build --release`. The binary is then copied into the run
#     directory, so a rebuild by someone else during the run cannot change
#     the binary being measured.
#   * Disk times here swing by up to 4x between runs (disk writeback). So only
#     ratios between runs made in the same invocation mean much, and the
#     tools are INTERLEAVED: round 1 runs cp, rsync, promigrate; round 2
#     rsync, promigrate, cp; round 3 promigrate, cp, rsync; and so on.
#   * Every full copy goes into a fresh, empty directory on the same
#     filesystem as the source (under target/bench/). Before each one the
#     script runs `sync` and drops the page cache (`echo 3 >
#     /proc/sys/vm/drop_caches`), so every tool reads from disk. If the cache
#     cannot be dropped, the report says so and the run goes on.
#   * Each copy is timed until it is durable: the timed region is the tool
#     followed by `sync -f <target>`. That applies to promigrate too, which
#     fsyncs every file itself. Both the tool's own time and the total are
#     reported. Clocks: bash $EPOCHREALTIME (microseconds).
#   * Each tool runs under GNU `/usr/bin/time -v` for max RSS and CPU time.
#     The loadavg and the CPU time used by everything else on the machine
#     (from /proc/stat; it includes kernel writeback) are recorded for every
#     measurement. They show how noisy each measurement was.
#   * No-op rerun: `rsync -a` and `promigrate apply` again onto their
#     complete copies from the last round. Each tool gets one run with a cold
#     cache and one with a warm cache per round, in alternating order.
#   * verify: `promigrate verify` (checksum level) on the promigrate copy
#     from the last round, once with a cold cache and once warm. GiB/s is
#     source bytes / wall time. It reads both sides, so 2x that from disk.
#   * Rate limit: a ~600 MiB subset of the blocks (hard links, so no extra
#     space is used). `promigrate apply --bwlimit 50M` and
#     `rsync -a --bwlimit=50M` run on it alternately, --rounds times each.
#     The achieved rate is compared with 50 MiB/s = 52428800 B/s.
#     promigrate: copied_bytes / its own duration_seconds, and
#     copied_bytes / wall time. rsync: bytes / wall time.
#
# Usage: scripts/bench.sh [--gib N] [--rounds N] [--out FILE] [--subset-mib N]
#   --gib N         data size in GiB (default 4; may be fractional)
#   --rounds N      interleaved rounds (default 3)
#   --out FILE      Markdown results file (default target/bench/results.md).
#                   Raw measurements go to the same name with .tsv.
#   --subset-mib N  size of the --bwlimit subset (default 600)
#
# Needs: cargo, python3, rsync, GNU time (/usr/bin/time), coreutils sync with
# -f, setsid, and about 3x the data size free (the data, plus two full copies
# that exist at the same time). On Debian: apt-get install -y rsync time.
#
# Cleanup: the run directory target/bench/run.XXXXXX, which holds every
# copy, is removed on exit, also on failure or Ctrl-C. Processes the script
# started are stopped. Left behind: the cached data under target/fixtures/
# (its size is in the report), the results .md and .tsv files, and the
# release build.

set -euo pipefail

readonly PROG=${0##*/}
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
# The Python half of this script (json-fields, subset, report).
BENCH_PY=$ROOT/scripts/lib/bench.py
readonly ROOT
readonly BWLIMIT=50M BWLIMIT_BPS=52428800 PARALLELISM=4

log() { printf '%s [%(%H:%M:%S)T] %s\n' "$PROG" -1 "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage() { sed -n '/^# Usage:/,/^#   --subset-mib/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------- arguments
GIB=4 ROUNDS=3 OUT="" SUBSET_MIB=600
need_val() { [[ $2 -ge 2 ]] || die "option $1 needs a value"; }
while (($#)); do
	case $1 in
	--gib) need_val "$1" "$#"; GIB=$2; shift 2 ;;
	--gib=*) GIB=${1#*=}; shift ;;
	--rounds) need_val "$1" "$#"; ROUNDS=$2; shift 2 ;;
	--rounds=*) ROUNDS=${1#*=}; shift ;;
	--out) need_val "$1" "$#"; OUT=$2; shift 2 ;;
	--out=*) OUT=${1#*=}; shift ;;
	--subset-mib) need_val "$1" "$#"; SUBSET_MIB=$2; shift 2 ;;
	--subset-mib=*) SUBSET_MIB=${1#*=}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done
[[ $GIB =~ ^[0-9]+([.][0-9]+)?$ && ! $GIB =~ ^0+([.]0+)?$ ]] || die "--gib must be a positive number"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $SUBSET_MIB =~ ^[1-9][0-9]*$ ]] || die "--subset-mib must be a positive integer"

BENCH=$ROOT/target/bench
FIX=$ROOT/target/fixtures
DATA=$FIX/bench-blocks-${GIB}gib
[[ -n $OUT ]] || OUT=$BENCH/results.md
mkdir -p -- "$BENCH" "$(dirname -- "$OUT")"
OUT=$(cd -- "$(dirname -- "$OUT")" && pwd -P)/$(basename -- "$OUT")
TSV_OUT=${OUT%.md}.tsv
[[ $TSV_OUT != "$OUT" ]] || TSV_OUT=$OUT.tsv

for cmd in cargo python3 rsync setsid sync du find df stat; do
	command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd (Debian: apt-get install -y rsync time)"
done
{ [[ -x /usr/bin/time ]] && /usr/bin/time -v true 2>/dev/null; } ||
	die "GNU time with -v is needed at /usr/bin/time (Debian: apt-get install -y time)"
[[ -n ${EPOCHREALTIME:-} ]] || die "bash >= 5 is needed (\$EPOCHREALTIME)"

# ------------------------------------------------------------------ cleanup
WORK="" CHILD=""
on_exit() {
	local rc=$?
	trap - EXIT
	set +e
	if [[ -n $CHILD ]]; then
		# The child runs in its own session (setsid): stop its whole group.
		kill -TERM -- "-$CHILD" 2>/dev/null
		wait "$CHILD" 2>/dev/null
	fi
	if [[ -n $WORK && -d $WORK ]]; then
		log "removing run directory $WORK"
		rm -rf -- "$WORK"
	fi
	((rc == 0)) || printf '%s: FAILED (exit %d)\n' "$PROG" "$rc" >&2
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WORK=$(mktemp -d "$BENCH/run.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
TSV=$WORK/measurements.tsv
FACTS=$WORK/facts.tsv
: >"$TSV"
: >"$FACTS"

fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
# Other processes using >= 5% CPU (ps: CPU time / lifetime), e.g. "rustc 95%".
busy_procs() {
	ps -eo pid=,pcpu=,comm= --sort=-pcpu | awk -v me=$$ '
		$1 != me && $3 != "ps" && $2 >= 5 {printf "%s%s %s%%", (n++ ? ", " : ""), $3, $2}
		END {if (!n) printf "none"}'
}

# ------------------------------------------------------------------ helpers
# Prints "busy_jiffies iowait_jiffies" for all CPUs from /proc/stat.
cpu_jiffies() {
	local _c u n s _idle w irq sirq st _rest
	read -r _c u n s _idle w irq sirq st _rest </proc/stat
	printf '%d %d\n' $((u + n + s + irq + sirq + st)) "$w"
}

# Prints "bytes files" of the regular files under $1, except promigrate's own
# bookkeeping files at its top level (.promigrate*, e.g. its lock file).
tree_stats() {
	find "$1" -type f ! -path "$1/.promigrate*" -printf '%s\n' | awk '{b += $1; n++} END {printf "%.0f %d\n", b, n}'
}

CAN_DROP=1 DROP_NOTE="yes (sync; echo 3 > /proc/sys/vm/drop_caches before every cold measurement)"
drop_caches() {
	sync
	((CAN_DROP)) || return 0
	if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
		CAN_DROP=0
		DROP_NOTE="NO: writing /proc/sys/vm/drop_caches failed, so the \"cold\" runs may read from the page cache"
		log "WARNING: cannot drop the page cache; continuing without (see report)"
	fi
}

# write_plan FILE SOURCE MOUNT_DIR
write_plan() {
	cat >"$1" <<EOF
apiVersion: promigrate/v1
kind: Migration
metadata:
  name: bench
source:
  path: $2
target:
  path: $3
  subPath: prometheus-db
  securityContext:
    runAsUser: 1000
    fsGroup: 2000
transfer:
  parallelism: $PARALLELISM
EOF
}

# Selected fields of a promigrate JSON report ($1), compact, or "-".
json_fields() {
	python3 "$BENCH_PY" json-fields "$1"
}

# measure KIND ROUND TOOL POS SYNC_PATH -- CMD...
# Runs CMD under /usr/bin/time -v in its own session, then `sync -f
# SYNC_PATH` (skipped if SYNC_PATH is empty), and appends one row to $TSV:
# kind round tool pos t0 t1 t2 load1 busy0 busy1 iow0 iow1 user sys rss json
# (t1 - t0 = the tool, t2 - t0 = the tool plus the sync). Dies on failure.
measure() {
	local kind=$1 round=$2 tool=$3 pos=$4 syncp=$5
	shift 6
	local id=$kind-r$round-$tool
	local tv=$LOGS/$id.time out=$LOGS/$id.out err=$LOGS/$id.err
	local load c0 c1 t0 t1 t2 rc=0 user sys rss js
	read -r load _ </proc/loadavg
	c0=$(cpu_jiffies)
	t0=$EPOCHREALTIME
	setsid /usr/bin/time -v -o "$tv" "$@" >"$out" 2>"$err" &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=""
	t1=$EPOCHREALTIME
	if ((rc == 0)) && [[ -n $syncp ]]; then
		sync -f -- "$syncp" || rc=$?
	fi
	t2=$EPOCHREALTIME
	c1=$(cpu_jiffies)
	if ((rc != 0)); then
		printf '%s: %s failed (exit %d): %s\n--- stderr (last 20 lines):\n' "$PROG" "$tool" "$rc" "$*" >&2
		tail -n 20 -- "$err" >&2 || true
		printf -- '--- stdout (last 20 lines):\n' >&2
		tail -n 20 -- "$out" >&2 || true
		die "$id failed"
	fi
	read -r user sys rss < <(awk -F': ' '
		/User time \(seconds\)/ {u = $2}
		/System time \(seconds\)/ {s = $2}
		/Maximum resident set size/ {m = $2}
		END {printf "%.2f %.2f %.0f\n", u, s, m}' "$tv")
	js=-
	[[ $tool != promigrate* ]] || js=$(json_fields "$out")
	if [[ $js == *'"ok":false'* ]]; then
		die "$id: promigrate reported ok=false (see $out)"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$kind" "$round" "$tool" "$pos" "$t0" "$t1" "$t2" "$load" \
		"${c0% *}" "${c1% *}" "${c0#* }" "${c1#* }" "$user" "$sys" "$rss" "$js" >>"$TSV"
	log "  $id: $(python3 -c 'import sys; a, b, c = map(float, sys.argv[1:]); print("%.2f s (tool %.2f s + sync %.2f s)" % (c - a, b - a, c - b))' "$t0" "$t1" "$t2"), max RSS ${rss} KiB"
}

# check_copy DIR LABEL: the copy must have the same file count and bytes as
# the source (cheap sanity check; the content check is promigrate verify).
check_copy() {
	local got
	got=$(tree_stats "$1")
	[[ $got == "$DATA_STATS" ]] || die "$2: copy in $1 has 'bytes files' = '$got', source has '$DATA_STATS'"
}

# ---------------------------------------------------------------- the build
read -r _ _ LOAD15_START _ </proc/loadavg
fact uptime_start "$(uptime)"
fact procs_start "$(busy_procs)"
log "building the release binary (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
BIN=$WORK/promigrate
. "$ROOT/scripts/lib/target.sh"
cp -- "$(release_bin)" "$BIN"
fact promigrate_version "$("$BIN" --version 2>&1 | head -n 1)"
fact promigrate_sha256 "$(sha256sum "$BIN" | cut -c1-16)"
fact git_head "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
fact git_dirty "$(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null | wc -l | tr -d ' ') tracked file(s) modified"

# ------------------------------------------------------------ free space
GIB_BYTES=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 2**30))' "$GIB")
AVAIL=$(df -B1 --output=avail "$BENCH" | tail -n 1 | tr -d ' ')
if [[ -e $DATA.complete ]]; then COPIES=2; else COPIES=3; fi
# COPIES x the data, 5% for block-set overshoot, 1 GiB to spare.
NEED=$(python3 -c 'import sys; g, c = int(sys.argv[1]), int(sys.argv[2]); print(int(c * g * 1.05) + 2**30)' "$GIB_BYTES" "$COPIES")
gib() { python3 -c 'import sys; print("%.1f GiB" % (int(sys.argv[1]) / 2**30))' "$1"; }
if ((AVAIL < NEED)); then
	die "not enough free space on $(df --output=target "$BENCH" | tail -n 1): need $(gib "$NEED") ($COPIES x $GIB GiB + margin: $([[ $COPIES == 3 ]] && echo "the data, ")two full copies at once), have $(gib "$AVAIL")"
fi
log "free space: $(gib "$AVAIL") available, $(gib "$NEED") needed"

# ------------------------------------------------------------------- data
log "making the data set (cached): $DATA"
"$ROOT/scripts/gen-tsdb.sh" "$FIX/tsdb" --replicate-to "$DATA" --gib "$GIB" >&2 ||
	die "gen-tsdb.sh failed"
[[ -e $DATA.complete ]] || die "gen-tsdb.sh did not complete $DATA"
DATA_STATS=$(tree_stats "$DATA")
DATA_BYTES=${DATA_STATS% *}
DATA_FILES=${DATA_STATS#* }
DATA_BLOCKS=$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l)
[[ $(stat -c %d "$DATA") == $(stat -c %d "$WORK") ]] ||
	log "WARNING: the data ($DATA) and the copies ($WORK) are on different filesystems"

fact date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
fact nproc "$(nproc)"
fact cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
fact kernel "$(uname -sr)"
fact mem "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
MNT=$(df --output=target "$WORK" | tail -n 1)
# stat -f prints ext2/ext3 for ext4 too, so also give the type from the mount table.
fact fs_type "$(stat -f -c %T "$WORK") (mount type: $(awk -v m="$MNT" '$2 == m {t = $3} END {print t}' /proc/mounts))"
fact fs_mount "$(df --output=source "$WORK" | tail -n 1) on $MNT ($(awk -v m="$MNT" '$2 == m {o = $4} END {print o}' /proc/mounts))"
fact same_fs "$([[ $(stat -c %d "$DATA") == $(stat -c %d "$WORK") ]] && echo yes || echo NO)"
fact cp_version "$(cp --version | head -n 1)"
fact rsync_version "$(rsync --version | head -n 1 | tr -s ' ')"
fact data_dir "${DATA#"$ROOT"/}"
fact data_gib_requested "$GIB"
fact data_bytes "$DATA_BYTES"
fact data_files "$DATA_FILES"
fact data_blocks "$DATA_BLOCKS"
fact rounds "$ROUNDS"
fact parallelism "$PARALLELISM"
fact bwlimit "$BWLIMIT"
fact bwlimit_bps "$BWLIMIT_BPS"

# Probe once whether the page cache can be dropped.
drop_caches
log "data: $DATA_BLOCKS blocks, $DATA_FILES files, $(gib "$DATA_BYTES"); page-cache drop: $DROP_NOTE"

# ------------------------------------------------------------- full copies
TOOLS=(cp rsync promigrate)
# copy_once ROUND TOOL POS: one cold full copy into a fresh directory.
copy_once() {
	local r=$1 tool=$2 pos=$3 d=$WORK/full-r$1-$2
	mkdir -p -- "$d"
	case $tool in
	cp)
		drop_caches
		measure full "$r" cp "$pos" "$d" -- cp -a -- "$DATA" "$d/prometheus-db"
		;;
	rsync)
		drop_caches
		measure full "$r" rsync "$pos" "$d" -- rsync -a -- "$DATA/" "$d/prometheus-db/"
		;;
	promigrate)
		write_plan "$WORK/plan-r$r.yaml" "$DATA" "$d"
		drop_caches
		measure full "$r" promigrate "$pos" "$d" -- \
			"$BIN" apply -f "$WORK/plan-r$r.yaml" --yes --state-dir "$WORK/state-r$r" --output json
		;;
	esac
	check_copy "$d/prometheus-db" "$tool (round $r)"
	if [[ $tool == promigrate && $r == 1 ]]; then
		fact promigrate_extra "$(find "$d/prometheus-db" -maxdepth 1 -type f -name '.promigrate*' -printf '%f (%s bytes) ' | sed 's/ $//')"
	fi
	# Keep the last round's rsync and promigrate copies for the no-op reruns
	# and verify; remove everything else now to bound disk use.
	if ((r != ROUNDS)) || [[ $tool == cp ]]; then
		rm -rf -- "$d"
	fi
}

for ((r = 1; r <= ROUNDS; r++)); do
	order=()
	for ((k = 0; k < 3; k++)); do order+=("${TOOLS[(r - 1 + k) % 3]}"); done
	log "round $r/$ROUNDS: ${order[*]}"
	for ((k = 0; k < 3; k++)); do copy_once "$r" "${order[k]}" $((k + 1)); done
done

# ---------------------------------------------------------- no-op reruns
LAST_RSYNC=$WORK/full-r$ROUNDS-rsync
LAST_PROM=$WORK/full-r$ROUNDS-promigrate
LAST_PLAN=$WORK/plan-r$ROUNDS.yaml
LAST_STATE=$WORK/state-r$ROUNDS
noop_once() { # ROUND TOOL POS CACHE
	local r=$1 tool=$2 pos=$3 cache=$4
	[[ $cache == warm ]] || drop_caches
	if [[ $tool == rsync ]]; then
		measure "noop-$cache" "$r" rsync "$pos" "$LAST_RSYNC" -- \
			rsync -a -- "$DATA/" "$LAST_RSYNC/prometheus-db/"
	else
		measure "noop-$cache" "$r" promigrate "$pos" "$LAST_PROM" -- \
			"$BIN" apply -f "$LAST_PLAN" --yes --state-dir "$LAST_STATE" --output json
	fi
}
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then order=(rsync promigrate); else order=(promigrate rsync); fi
	log "no-op reruns, round $r/$ROUNDS: ${order[*]} (cold, then warm)"
	for ((k = 0; k < 2; k++)); do
		noop_once "$r" "${order[k]}" $((k + 1)) cold
		noop_once "$r" "${order[k]}" $((k + 1)) warm
	done
done
check_copy "$LAST_RSYNC/prometheus-db" "rsync after the no-op reruns"
check_copy "$LAST_PROM/prometheus-db" "promigrate after the no-op reruns"

# ------------------------------------------------------------------ verify
log "verify (checksum) on the promigrate copy: cold, then warm"
drop_caches
measure verify-cold 1 promigrate 1 "" -- "$BIN" verify -f "$LAST_PLAN" --state-dir "$LAST_STATE" --output json
measure verify-warm 1 promigrate 1 "" -- "$BIN" verify -f "$LAST_PLAN" --state-dir "$LAST_STATE" --output json
rm -rf -- "$LAST_RSYNC" "$LAST_PROM"

# ---------------------------------------------------------- rate limiting
SUB=$WORK/subset-src
mkdir -p -- "$SUB"
# The first blocks (by name) until SUBSET_MIB MiB is reached, as hard links.
python3 "$BENCH_PY" subset "$DATA" "$SUB" "$SUBSET_MIB"
SUB_STATS=$(tree_stats "$SUB")
fact subset_bytes "${SUB_STATS% *}"
fact subset_files "${SUB_STATS#* }"
fact subset_blocks "$(find "$SUB" -mindepth 1 -maxdepth 1 -type d | wc -l)"
fact subset_mib_requested "$SUBSET_MIB"
log "rate limit: subset of $(gib "${SUB_STATS% *}") ($(find "$SUB" -mindepth 1 -maxdepth 1 -type d | wc -l) blocks), --bwlimit $BWLIMIT"
for ((r = 1; r <= ROUNDS; r++)); do
	if ((r % 2)); then order=(promigrate rsync); else order=(rsync promigrate); fi
	for ((k = 0; k < 2; k++)); do
		tool=${order[k]} d=$WORK/bw-r$r-${order[k]}
		mkdir -p -- "$d"
		if [[ $tool == rsync ]]; then
			drop_caches
			measure bwlimit "$r" rsync $((k + 1)) "$d" -- \
				rsync -a --bwlimit="$BWLIMIT" -- "$SUB/" "$d/prometheus-db/"
		else
			write_plan "$WORK/plan-bw-r$r.yaml" "$SUB" "$d"
			drop_caches
			measure bwlimit "$r" promigrate $((k + 1)) "$d" -- \
				"$BIN" apply -f "$WORK/plan-bw-r$r.yaml" --yes --bwlimit "$BWLIMIT" \
				--state-dir "$WORK/state-bw-r$r" --output json
		fi
		[[ $(tree_stats "$d/prometheus-db") == "$SUB_STATS" ]] || die "bwlimit copy by $tool is incomplete"
		rm -rf -- "$d"
	done
done

# ------------------------------------------------------------------ report
sync
fact uptime_end "$(uptime)"
fact procs_end "$(busy_procs)"
fact drop_caches "$DROP_NOTE"
fact fixtures_size "$(du -sh "$DATA" | cut -f1) in ${DATA#"$ROOT"/} (+ $(du -sh "$FIX/tsdb" | cut -f1) in target/fixtures/tsdb)"
read -r _ _ LOAD15_END _ </proc/loadavg
fact load15 "$LOAD15_START -> $LOAD15_END"
fact clk_tck "$(getconf CLK_TCK)"

REPORT=$WORK/report.md
python3 "$BENCH_PY" report "$FACTS" "$TSV" >"$REPORT"

cp -- "$REPORT" "$OUT"
{
	printf '# raw measurements from scripts/bench.sh, %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	printf '# kind\tround\ttool\tpos\tt0\tt1_tool_done\tt2_synced\tload1\tbusy_jiffies0\tbusy_jiffies1\tiowait0\tiowait1\tuser_s\tsys_s\tmaxrss_kib\tpromigrate_json\n'
	cat -- "$TSV"
	sed 's/^/# fact\t/' "$FACTS"
} >"$TSV_OUT"
cat -- "$REPORT"
log "results written to $OUT (raw: $TSV_OUT)"
