#!/usr/bin/env bash
#
# gen-tsdb.sh - build a REAL Prometheus TSDB data directory for tests/demos.
#
# promigrate copies Prometheus TSDB data directories, so its integration tests
# and `make demo` need data written by the real Prometheus code, not
# hand-made fixtures. This script:
#
#   1. generates deterministic OpenMetrics text (counter demo_requests_total,
#      gauge demo_temperature_celsius; default 40 series, one sample every
#      60 s, covering --blocks-hours hours and ending 3h05m before "now");
#   2. turns it into real 2h blocks with
#      `promtool tsdb create-blocks-from openmetrics`;
#   3. unless --no-server, starts a real `prometheus` on 127.0.0.1 on that
#      directory. It scrapes itself so that it writes a WAL (wal/) and
#      memory-mapped head chunks (chunks_head/). It also compacts the 2h
#      blocks into larger blocks (compaction.level > 1). The script then
#      deletes one series through the admin API, which leaves a non-empty
#      `tombstones` file in a block, and stops Prometheus with SIGTERM.
#
# The result is left exactly as Prometheus left it.
#
# Why the data ends 3h05m before now: Prometheus' head starts where the last
# block ends. Once the head spans more than 1.5 x 2h, the first scrape
# triggers a head compaction. That compaction writes no block, but it also
# compacts the on-disk blocks. So the blocks get compacted about 5 s after
# startup, when the scrape manager starts, instead of at the 1-minute
# compaction tick.
#
# Scrape jobs: the self-scrape runs every 1s, as usual. A second job scrapes
# the same target every 100ms. A head chunk is only cut, and written to
# chunks_head/, after about 120 samples or about 4x the time its first 30
# samples took. At 100ms that takes about 12-25 s, not about 2 minutes at 1s.
#
# Idempotent and safe for concurrent callers: it holds an exclusive flock on
# OUT_DIR.lock, builds into OUT_DIR.tmp.<pid>, then renames the result to
# OUT_DIR and creates the sibling marker OUT_DIR.complete. That is a sibling,
# not a file inside OUT_DIR, so OUT_DIR holds only Prometheus files. If the
# marker exists, nothing is rebuilt.
#
# --replicate-to DIR --gib N also creates DIR, which holds at least N GiB of
# real blocks for copy benchmarks. Its source is the blocks of OUT_DIR plus a
# larger promtool-built set (2000 series, one sample every 15 s, 24 h, in 2h
# blocks of about 5 MB, 60 MB in all). That set is copied repeatedly. Each
# copy gets a fresh ULID: the directory name and the "ulid" field of
# meta.json change, and nothing else does. DIR uses its own lock and the DIR.complete marker in
# the same way.
#
# Requirements: bash, flock, python3, promtool and prometheus (tested with
# Debian's Prometheus 2.42), and curl (falls back to python3 urllib). Network
# use is limited to 127.0.0.1.

set -euo pipefail

readonly PROG=${0##*/}
PROMETHEUS=${PROMETHEUS_BIN:-prometheus}
PROMTOOL=${PROMTOOL_BIN:-promtool}

# Tunables (seconds unless noted).
readonly END_OFFSET=$((3 * 3600 + 300)) # data ends this long before now
readonly SCRAPE_MIN=15                  # keep Prometheus scraping at least this long
readonly COMPACT_WAIT=20                # wait this long for compaction to show up
readonly SERVER_MAX=40                  # never wait longer than this after ready
readonly READY_TIMEOUT=30
readonly STOP_TIMEOUT=30
readonly BIG_SERIES=2000 BIG_HOURS=24 BIG_STEP=15 # replication source blocks

usage() {
	cat <<EOF
Usage: $PROG OUT_DIR [--blocks-hours N] [--series N] [--no-server]
                     [--replicate-to DIR --gib N]

Builds a real Prometheus TSDB data directory at OUT_DIR (blocks from promtool,
plus WAL, head chunks, compacted blocks and tombstones from a short real
Prometheus run). Does nothing if OUT_DIR.complete already exists.

  --blocks-hours N   hours of backfilled data (default 30)
  --series N         number of backfilled series (default 40)
  --no-server        only run promtool; no Prometheus run (so no wal/,
                     chunks_head/, compaction or tombstones)
  --replicate-to DIR also create DIR holding at least --gib N GiB of real
                     blocks (copies of OUT_DIR's blocks plus a bigger
                     generated block set, each under a fresh ULID)
  --gib N            size target for --replicate-to (may be fractional)

Environment: PROMETHEUS_BIN, PROMTOOL_BIN override the binaries used.
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

# ---------------------------------------------------------------- arguments
OUT="" HOURS=30 SERIES=40 NO_SERVER=0 REPL="" GIB=""
need_val() { [[ $2 -ge 2 ]] || die "option $1 needs a value"; }
while (($#)); do
	case $1 in
	--blocks-hours) need_val "$1" "$#"; HOURS=$2; shift 2 ;;
	--blocks-hours=*) HOURS=${1#*=}; shift ;;
	--series) need_val "$1" "$#"; SERIES=$2; shift 2 ;;
	--series=*) SERIES=${1#*=}; shift ;;
	--no-server) NO_SERVER=1; shift ;;
	--replicate-to) need_val "$1" "$#"; REPL=$2; shift 2 ;;
	--replicate-to=*) REPL=${1#*=}; shift ;;
	--gib) need_val "$1" "$#"; GIB=$2; shift 2 ;;
	--gib=*) GIB=${1#*=}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; [[ $# -eq 1 && -z $OUT ]] || { usage >&2; exit 2; }; OUT=$1; shift ;;
	-*) usage >&2; die "unknown option: $1" ;;
	*) [[ -z $OUT ]] || { usage >&2; die "unexpected argument: $1"; }; OUT=$1; shift ;;
	esac
done
[[ -n $OUT ]] || { usage >&2; exit 2; }
if ! [[ $HOURS =~ ^[0-9]*[1-9][0-9]*$ ]]; then die "--blocks-hours must be a positive integer"; fi
if ! [[ $SERIES =~ ^[0-9]*[1-9][0-9]*$ ]]; then die "--series must be a positive integer"; fi
HOURS=$((10#$HOURS)) SERIES=$((10#$SERIES))
if [[ -n $REPL || -n $GIB ]]; then
	[[ -n $REPL && -n $GIB ]] || die "--replicate-to and --gib must be given together"
	if ! [[ $GIB =~ ^[0-9]+([.][0-9]+)?$ && ! $GIB =~ ^0+([.]0+)?$ ]]; then
		die "--gib must be a positive number"
	fi
fi

for cmd in "$PROMTOOL" python3 flock; do
	command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd"
done
if ((!NO_SERVER)); then
	command -v "$PROMETHEUS" >/dev/null 2>&1 || die "required command not found: $PROMETHEUS"
fi

# Absolute path of $1 (its parent is created); refuses /, . and .. as names.
abspath() {
	local p=${1%/} d b
	[[ -n $p ]] || die "invalid path: '$1'"
	d=$(dirname -- "$p")
	b=$(basename -- "$p")
	[[ $b != . && $b != .. && $b != / ]] || die "invalid path: '$1'"
	mkdir -p -- "$d" || die "cannot create parent directory of $p"
	d=$(cd -- "$d" && pwd -P)
	printf '%s/%s\n' "${d%/}" "$b"
}
OUT=$(abspath "$OUT")
if [[ -n $REPL ]]; then
	REPL=$(abspath "$REPL")
	[[ $REPL != "$OUT" && $REPL != "$OUT"/* && $OUT != "$REPL"/* ]] ||
		die "--replicate-to must not be OUT_DIR or nested with it"
fi

# ------------------------------------------------------------ cleanup state
WORK="" TMP_OUT="" REPL_TMP="" PROM_PID="" PROM_LOG=""

# pid_alive PID: the process exists and is not a zombie.
. "$(dirname -- "${BASH_SOURCE[0]}")/lib/proc.sh"

# Stops the Prometheus we started: SIGTERM, then SIGKILL after STOP_TIMEOUT.
# Returns Prometheus' exit status (non-zero if it had to be killed).
stop_prometheus() {
	local pid=$PROM_PID i rc=0
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
		pid_alive "$pid" || break
		sleep 0.1
	done
	if pid_alive "$pid"; then
		log "prometheus (pid $pid) did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || rc=$?
	PROM_PID=""
	return "$rc"
}

on_exit() {
	local rc=$? d
	trap - EXIT
	set +e
	if [[ -n $PROM_PID ]]; then
		stop_prometheus
	fi
	if ((rc != 0)); then
		if [[ -n $PROM_LOG && -s $PROM_LOG ]]; then
			printf '%s: last 30 lines of the prometheus log (%s):\n' "$PROG" "$PROM_LOG" >&2
			tail -n 30 -- "$PROM_LOG" >&2
		fi
		if [[ -n $TMP_OUT$REPL_TMP ]]; then
			for d in "$TMP_OUT" "$REPL_TMP"; do
				[[ -z $d ]] || rm -rf -- "$d"
			done
			printf '%s: FAILED (exit %d); partial output removed\n' "$PROG" "$rc" >&2
		else
			printf '%s: FAILED (exit %d)\n' "$PROG" "$rc" >&2
		fi
	fi
	[[ -z $WORK ]] || rm -rf -- "$WORK"
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WORK=$(mktemp -d -t gen-tsdb.XXXXXXXX)
# The Python half of this script: scripts/lib/gen_tsdb.py (commands cmd_*).
HELPER=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/lib/gen_tsdb.py


helper() { python3 "$HELPER" "$@"; }

# http METHOD URL [key=value ...] -> prints the HTTP status (000/0 if no reply).
# The key=value pairs are sent form-urlencoded in the body.
http() {
	local method=$1 url=$2 kv
	shift 2
	if command -v curl >/dev/null 2>&1; then
		local args=(-sS -o /dev/null -w '%{http_code}' --max-time 10 -X "$method")
		for kv in "$@"; do args+=(--data-urlencode "$kv"); done
		curl "${args[@]}" "$url" 2>/dev/null || true
	else
		helper http "$method" "$url" "$@"
	fi
}

has_files() { [[ -n $(find "$1" -mindepth 1 -maxdepth 1 -type f -size +0c -print -quit 2>/dev/null) ]]; }
compacted() { grep -qsE '"level": *([2-9]|[1-9][0-9])' "$1"/*/meta.json; }

# Refuse to clobber an existing non-empty directory that has no marker.
prepare_target() {
	local dir=$1
	if [[ -e $dir ]]; then
		if [[ -d $dir && -z $(ls -A -- "$dir") ]]; then
			rmdir -- "$dir"
		else
			die "$dir exists but $dir.complete does not; remove it and re-run"
		fi
	fi
	# Leftovers of callers that died mid-build (we hold the lock, so no live
	# builder owns them).
	rm -rf -- "$dir".tmp.[0-9]*
}

# ------------------------------------------------------------- prometheus
start_prometheus() {
	local data=$1 conf=$WORK/prom attempt i
	mkdir -p "$conf"
	PROM_LOG=$conf/prometheus.log
	for attempt in 1 2 3; do
		PORT=$(helper free-port)
		cat >"$conf/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PORT"]
  # Same target at 100ms so head chunks get cut and m-mapped to chunks_head/
  # within ~12-25s (at 1s that takes ~2 min).
  - job_name: prometheus-fast
    scrape_interval: 100ms
    scrape_timeout: 100ms
    static_configs:
      - targets: ["127.0.0.1:$PORT"]
EOF
		log "starting prometheus on 127.0.0.1:$PORT (attempt $attempt, log: $PROM_LOG)"
		# fds 8/9 are our flock fds; Prometheus must not inherit them.
		(cd "$conf" && exec "$PROMETHEUS" \
			--config.file="$conf/prometheus.yml" \
			--storage.tsdb.path="$data" \
			--storage.tsdb.retention.time=30d \
			--web.listen-address="127.0.0.1:$PORT" \
			--web.enable-admin-api) >"$PROM_LOG" 2>&1 8>&- 9>&- &
		PROM_PID=$!
		for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
			if [[ $(http GET "http://127.0.0.1:$PORT/-/ready") == 200 ]]; then
				log "prometheus ready (pid $PROM_PID)"
				return 0
			fi
			pid_alive "$PROM_PID" || break
			sleep 0.2
		done
		if pid_alive "$PROM_PID"; then
			die "prometheus did not become ready within ${READY_TIMEOUT}s"
		fi
		local rc=0
		wait "$PROM_PID" || rc=$?
		PROM_PID=""
		if grep -qi 'address already in use' "$PROM_LOG"; then
			log "port $PORT was taken, retrying"
			continue
		fi
		die "prometheus exited during startup (exit $rc)"
	done
	die "could not start prometheus on a free port"
}

run_server() {
	local data=$1 t0 e done_compact=0 done_chunks=0 del code start end blk lvl
	start_prometheus "$data"
	t0=$SECONDS
	while :; do
		e=$((SECONDS - t0))
		if ((!done_compact)) && compacted "$data"; then
			done_compact=1
			log "prometheus compacted the promtool blocks (level > 1 block present after ~${e}s)"
		fi
		if ((!done_chunks)) && has_files "$data/chunks_head"; then
			done_chunks=1
		fi
		if ((e >= SCRAPE_MIN && done_chunks && (done_compact || e >= COMPACT_WAIT))); then
			break
		fi
		((e < SERVER_MAX)) || break
		pid_alive "$PROM_PID" || die "prometheus exited unexpectedly"
		sleep 0.5
	done
	((done_compact)) || log "note: no compacted (level > 1) block appeared within ${e}s; keeping level-1 blocks"
	((done_chunks)) || log "warning: chunks_head/ still has no data after ${e}s"

	# Tombstones: delete one gauge series in the middle of the longest block.
	del=$(helper pickdel "$data") || die "could not pick a block for delete_series"
	read -r start end blk lvl <<<"$del"
	del='demo_temperature_celsius{instance="node-00:9100"}'
	code=$(http POST "http://127.0.0.1:$PORT/api/v1/admin/tsdb/delete_series" \
		"match[]=$del" "start=$start" "end=$end")
	[[ $code == 204 || $code == 200 ]] || die "delete_series returned HTTP $code"
	log "deleted $del in [$start, $end] (inside block $blk, level $lvl)"
	[[ -n $(find "$data" -mindepth 2 -maxdepth 2 -name tombstones -size +9c -print -quit) ]] ||
		die "no block has a non-empty tombstones file after delete_series"

	has_files "$data/wal" || die "wal/ is empty after $((SECONDS - t0))s of scraping"
	log "stopping prometheus (pid $PROM_PID) with SIGTERM after $((SECONDS - t0))s"
	stop_prometheus || die "prometheus did not exit cleanly"
	has_files "$data/wal" || die "wal/ is empty after prometheus stopped"
	PROM_LOG="" # success: no log tail on later failures
}

# ------------------------------------------------------------------ build
build_tsdb() {
	local range
	exec 9>"$OUT.lock"
	flock 9
	if [[ -e $OUT.complete ]]; then
		log "$OUT is already complete; nothing to do"
		exec 9>&-
		return 0
	fi
	prepare_target "$OUT"
	TMP_OUT=$OUT.tmp.$$
	mkdir -p -- "$TMP_OUT"

	range=$(helper demo "$WORK/demo.om" "$HOURS" "$SERIES" "$END_OFFSET")
	log "generated $SERIES series, ${HOURS}h at 60s ($(wc -l <"$WORK/demo.om") lines, unix ${range/ / .. })"
	if ! "$PROMTOOL" tsdb create-blocks-from openmetrics -q "$WORK/demo.om" "$TMP_OUT" >"$WORK/promtool.log" 2>&1; then
		cat "$WORK/promtool.log" >&2
		die "promtool tsdb create-blocks-from openmetrics failed"
	fi
	log "promtool created $(helper summary "$TMP_OUT" | wc -l) blocks"
	rm -f -- "$WORK/demo.om"

	if ((!NO_SERVER)); then
		run_server "$TMP_OUT"
	fi

	mv -T -- "$TMP_OUT" "$OUT"
	TMP_OUT=""
	touch -- "$OUT.complete"
	exec 9>&-
	log "done: $OUT ($(helper summary "$OUT" | awk '{n++; if ($2 > 1) c++; if ($5 > 9) t++} END {printf "%d blocks, %d compacted, %d with tombstones", n, c, t}'))"
}

replicate() {
	local target jobs big out
	exec 8>"$REPL.lock"
	flock 8
	if [[ -e $REPL.complete ]]; then
		log "$REPL is already complete; nothing to do"
		exec 8>&-
		return 0
	fi
	prepare_target "$REPL"
	REPL_TMP=$REPL.tmp.$$
	mkdir -p -- "$REPL_TMP"
	target=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 2**30))' "$GIB")
	jobs=$(nproc 2>/dev/null || echo 2)
	big=$WORK/big
	log "building replication source: $BIG_SERIES series, ${BIG_HOURS}h at ${BIG_STEP}s ($jobs parallel jobs)"
	out=$(helper big "$PROMTOOL" "$big" "$WORK" "$BIG_SERIES" "$BIG_HOURS" "$BIG_STEP" "$jobs")
	log "replication source: ${out% *} blocks, ${out#* } bytes; copying to reach $target bytes"
	out=$(helper replicate "$REPL_TMP" "$target" "$OUT" "$big")
	rm -rf -- "$big"
	mv -T -- "$REPL_TMP" "$REPL"
	REPL_TMP=""
	touch -- "$REPL.complete"
	exec 8>&-
	log "done: $REPL (${out% *} blocks, ${out#* } bytes)"
}

build_tsdb
if [[ -n $REPL ]]; then
	replicate
fi
