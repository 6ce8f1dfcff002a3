#!/usr/bin/env bash
#
# gen-tsdb3.sh - build a REAL Prometheus 3.x TSDB data directory for tests.
#
# Debian's Prometheus 2.42 (scripts/gen-tsdb.sh) never writes what today's servers write. This
# script has Prometheus 3.x (scripts/prometheus3.sh build, 3.16.0 by default) write it:
#
#   1. `promtool tsdb create-blocks-from openmetrics` (3.x) writes two older 2h blocks of
#      float samples (ending about 1h before now);
#   2. a real `prometheus` 3.x on 127.0.0.1 (free ports) with exemplar storage, metadata WAL
#      records, created-timestamp zero ingestion, start-timestamp storage (`st-storage`:
#      XOR2, histogramST and floathistogramST chunks), `fast-startup` (wal/series_state.json),
#      the memory snapshot on shutdown, a zstd WAL of 10 MB segments, a 30m out-of-order
#      window, the remote-write receiver, and 20s/60s blocks (the hidden test flags
#      --storage.tsdb.min-block-duration/max-block-duration) so that the head is compacted
#      into blocks every 20 s and those into 60 s blocks;
#   3. tests/prom3feed (built with `go build`, cached by a hash of its sources) feeds it:
#      scraped every second in the PrometheusProto format (native histograms with exemplars
#      and created timestamps, one of them, feed_huge_histogram, with 36000 buckets, whose
#      chunks are 1.4 MB: more than 1 MiB), and remote write 2.0 (series with start
#      timestamps; out-of-order float and histogram samples up to 3 minutes back);
#      a recording rule makes float histograms;
#   4. once a block holds a chunk of at least 1 MiB, an out-of-order block exists, the WAL
#      has a checkpoint, and the blocks are as tests/phases.rs needs them (a server started on
#      them compacts some of them once it has cut blocks of its own: with 20s/60s blocks that
#      holds while the newest 60 s range holds two or three, and the script stops within
#      seconds of a block being cut, before the next), or after MAX_RUN seconds, one backfilled
#      series is deleted through the admin API (a non-empty `tombstones`), and Prometheus is
#      stopped with SIGTERM, so it m-maps its head chunks and writes `chunk_snapshot.*`.
#      Which blocks Prometheus compacts is worked out as its compaction planner does
#      (pending() in scripts/lib/gen_tsdb3.py).
#
# The result is left exactly as Prometheus left it: blocks (level 1 from promtool and the
# head, compacted ones, out-of-order ones), wal/ (zstd, a checkpoint, series_state.json),
# wbl/, chunks_head/ (with out-of-order chunks), chunk_snapshot.*/. It ends with a summary
# on stderr (promtool tsdb list, sizes, chunk encodings and the largest chunks).
#
# Idempotent and safe for concurrent callers, like gen-tsdb.sh: an exclusive flock on
# OUT_DIR.lock, the build in OUT_DIR.tmp.<pid>, renamed to OUT_DIR, then the sibling marker
# OUT_DIR.complete; with the marker present nothing is rebuilt.
#
# `gen-tsdb3.sh --feeder` only builds the feeder (once, as above) and prints its path: tests
# that run a live Prometheus 3 of their own feed it with the same program.
#
# Requirements: bash, flock, python3, curl, go (for the feeder and, unless
# PROMETHEUS3_BIN_DIR is given, to build Prometheus 3). Network use: 127.0.0.1 only, plus the
# Go module proxy for builds.
#
# Environment:
#   PROMETHEUS3_BIN_DIR   a directory holding prometheus and promtool 3.x (default: the last
#                         stdout line of scripts/prometheus3.sh build)
#   PROMIGRATE_PROM3FEED_CACHE  where the feeder binary is cached
#                         (default ${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/prom3feed-<hash>)

set -euo pipefail

readonly PROG=${0##*/}
HERE=$(cd -- "$(dirname -- "$0")" && pwd -P)
readonly HERE ROOT=${HERE%/scripts}

readonly MIN_RUN=60     # keep Prometheus running at least this long (seconds after ready)
readonly MAX_RUN=240    # and never longer
readonly MIN_BLOCK=20 MAX_BLOCK=60 # --storage.tsdb.min/max-block-duration (seconds)
readonly CUT_MARGIN_MS=5000 # stop at least this long before the server cuts its next block
readonly READY_TIMEOUT=60
readonly STOP_TIMEOUT=60
readonly BIG_CHUNK=$((1 << 20))

usage() {
	cat <<EOF
Usage: $PROG OUT_DIR
       $PROG --feeder

Builds a real Prometheus 3.x TSDB data directory at OUT_DIR (see the header of this script).
Does nothing if OUT_DIR.complete already exists.

--feeder  only builds tests/prom3feed (if its cached binary is missing) and prints the
          binary's path on stdout, for tests that feed a Prometheus 3 of their own.

Environment: PROMETHEUS3_BIN_DIR, PROMIGRATE_PROM3FEED_CACHE.
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

OUT="" FEEDER_ONLY=0
while (($#)); do
	case $1 in
	-h | --help) usage; exit 0 ;;
	--feeder) FEEDER_ONLY=1; shift ;;
	-*) usage >&2; die "unknown option: $1" ;;
	*) [[ -z $OUT ]] || { usage >&2; die "unexpected argument: $1"; }; OUT=$1; shift ;;
	esac
done
if ((FEEDER_ONLY)); then
	[[ -z $OUT ]] || { usage >&2; die "--feeder takes no OUT_DIR"; }
else
	[[ -n $OUT ]] || { usage >&2; exit 2; }
fi
for cmd in python3 flock curl go; do
	command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd"
done

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
((FEEDER_ONLY)) || OUT=$(abspath "$OUT")

# ------------------------------------------------------------ cleanup state
WORK="" TMP_OUT="" PROM_PID="" FEED_PID="" PROM_LOG="" FEED_LOG=""

# pid_alive PID: the process exists and is not a zombie.
. "$HERE/lib/proc.sh"

# stop_pid PID TIMEOUT: SIGTERM, SIGKILL after TIMEOUT seconds; returns the exit status.
stop_pid() {
	local pid=$1 i rc=0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < $2 * 10; i++)); do
		pid_alive "$pid" || break
		sleep 0.1
	done
	if pid_alive "$pid"; then
		log "pid $pid did not exit within ${2}s of SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

on_exit() {
	local rc=$?
	trap - EXIT
	set +e
	[[ -z $FEED_PID ]] || stop_pid "$FEED_PID" 10
	[[ -z $PROM_PID ]] || stop_pid "$PROM_PID" "$STOP_TIMEOUT"
	if ((rc != 0)); then
		local f
		for f in "$PROM_LOG" "$FEED_LOG"; do
			if [[ -n $f && -s $f ]]; then
				printf '%s: last 30 lines of %s:\n' "$PROG" "$f" >&2
				tail -n 30 -- "$f" >&2
			fi
		done
		[[ -z $TMP_OUT ]] || rm -rf -- "$TMP_OUT"
		printf '%s: FAILED (exit %d)\n' "$PROG" "$rc" >&2
	fi
	[[ -z $WORK ]] || rm -rf -- "$WORK"
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WORK=$(mktemp -d -t gen-tsdb3.XXXXXXXX)
# The Python half of this script: scripts/lib/gen_tsdb3.py (commands cmd_*).
HELPER=$HERE/lib/gen_tsdb3.py

helper() { python3 "$HELPER" "$@"; }

# http METHOD URL [key=value ...] -> the HTTP status.
http() {
	local method=$1 url=$2 kv args=(-sS -o /dev/null -w '%{http_code}' --max-time 10)
	shift 2
	args+=(-X "$method")
	for kv in "$@"; do args+=(--data-urlencode "$kv"); done
	curl "${args[@]}" "$url" 2>/dev/null || true
}

# ------------------------------------------------------------------ binaries
prom_bin() {
	local dir=${PROMETHEUS3_BIN_DIR:-}
	if [[ -z $dir ]]; then
		dir=$(bash "$HERE/prometheus3.sh" build | tail -n 1) || die "scripts/prometheus3.sh build failed"
	fi
	[[ -x $dir/prometheus && -x $dir/promtool ]] || die "no prometheus/promtool in $dir"
	printf '%s\n' "$dir"
}

# The feeder, built once per content of tests/prom3feed (go.mod, go.sum, *.go).
feeder_bin() {
	local src=$ROOT/tests/prom3feed hash cache bin
	hash=$(cd "$src" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
	cache=${PROMIGRATE_PROM3FEED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/prom3feed-$hash}
	bin=$cache/prom3feed
	if [[ ! -x $bin ]]; then
		mkdir -p "$cache"
		(
			exec 7>"$cache.lock"
			flock 7
			if [[ ! -x $bin ]]; then
				log "building tests/prom3feed into $bin"
				cd "$src"
				GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOWORK=off GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 \
					GOPROXY=$(go env GOPROXY | sed -e 's/[,|]direct$//') \
					timeout 1200 nice go build -trimpath -o "$bin.tmp" . >"$cache/build.log" 2>&1 ||
					{ cat "$cache/build.log" >&2; exit 1; }
				mv -f "$bin.tmp" "$bin"
			fi
		) || die "building tests/prom3feed failed"
	fi
	printf '%s\n' "$bin"
}

# ------------------------------------------------------------- prometheus
FEATURES=exemplar-storage,memory-snapshot-on-shutdown,metadata-wal-records,created-timestamp-zero-ingestion,st-storage,fast-startup

write_config() {
	local conf=$1 prom_port=$2 feed_port=$3
	cat >"$conf/rules.yml" <<EOF
groups:
  - name: feed
    interval: 1s
    rules:
      # A rate of a native histogram is a float histogram.
      - record: feed:request_duration_seconds:rate15s
        expr: rate(feed_request_duration_seconds[15s])
EOF
	cat >"$conf/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
  scrape_native_histograms: true
  scrape_protocols: [PrometheusProto, OpenMetricsText1.0.0, PrometheusText0.0.4]
rule_files: [rules.yml]
storage:
  tsdb:
    out_of_order_time_window: 30m
  exemplars:
    max_exemplars: 100000
scrape_configs:
  - job_name: feed
    static_configs:
      - targets: ["127.0.0.1:$feed_port"]
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$prom_port"]
EOF
}

# start_prometheus BIN DATA: sets PROM_PID PROM_PORT FEED_PORT.
start_prometheus() {
	local bin=$1 data=$2 conf=$WORK/prom attempt i rc ports
	mkdir -p "$conf"
	PROM_LOG=$conf/prometheus.log
	for attempt in 1 2 3; do
		ports=$(helper free-ports 2)
		read -r PROM_PORT FEED_PORT <<<"$ports"
		write_config "$conf" "$PROM_PORT" "$FEED_PORT"
		log "starting prometheus 3 on 127.0.0.1:$PROM_PORT (attempt $attempt, log: $PROM_LOG)"
		# fd 9 is our flock; Prometheus must not inherit it.
		# setpriv --pdeathsig: it ends with this script, even one killed with SIGKILL.
		(cd "$conf" && exec setpriv --pdeathsig KILL "$bin/prometheus" \
			--config.file="$conf/prometheus.yml" \
			--storage.tsdb.path="$data" \
			--web.listen-address="127.0.0.1:$PROM_PORT" \
			--web.enable-remote-write-receiver \
			--web.enable-admin-api \
			--enable-feature="$FEATURES" \
			--storage.tsdb.wal-compression-type=zstd \
			--storage.tsdb.wal-segment-size=10MB \
			--storage.tsdb.min-block-duration=${MIN_BLOCK}s \
			--storage.tsdb.max-block-duration=${MAX_BLOCK}s) >"$PROM_LOG" 2>&1 9>&- &
		PROM_PID=$!
		for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
			if [[ $(http GET "http://127.0.0.1:$PROM_PORT/-/ready") == 200 ]]; then
				log "prometheus ready (pid $PROM_PID)"
				return 0
			fi
			pid_alive "$PROM_PID" || break
			sleep 0.2
		done
		pid_alive "$PROM_PID" && die "prometheus did not become ready within ${READY_TIMEOUT}s"
		rc=0
		wait "$PROM_PID" || rc=$?
		PROM_PID=""
		if grep -qi 'address already in use' "$PROM_LOG"; then
			log "port $PROM_PORT was taken, retrying"
			continue
		fi
		die "prometheus exited during startup (exit $rc)"
	done
	die "could not start prometheus on a free port"
}

# Sets big ooo ckpt lvl now then cut wbl busy (the caller's locals) from `helper state`.
look() {
	local state
	state=$(helper state "$1" "$((MIN_BLOCK * 1000))" "$((MAX_BLOCK * 1000))" 2>/dev/null) ||
		state="0 0 0 0 0 0 0 0 1"
	read -r big ooo ckpt lvl now then cut wbl busy <<<"$state"
}

# True when the TSDB has what the fixture promises and the server may be stopped now.
ready() {
	((big >= BIG_CHUNK && ooo > 0 && ckpt > 0 && lvl > 1 && wbl > 0 && busy == 0 &&
		now == 0 && then > 0 && cut >= CUT_MARGIN_MS))
}

# Tombstones: deletes one backfilled series in the middle of a promtool block (idempotent).
delete_series() {
	local del start end blk code
	del=$(helper pickdel "$1") || die "could not pick a block for delete_series"
	read -r start end blk <<<"$del"
	code=$(http POST "http://127.0.0.1:$PROM_PORT/api/v1/admin/tsdb/delete_series" \
		'match[]=backfill_value{instance="node-0"}' "start=$start" "end=$end")
	[[ $code == 204 || $code == 200 ]] || die "delete_series returned HTTP $code"
	log "deleted backfill_value{instance=\"node-0\"} in [$start, $end] (block $blk)"
}

run_server() {
	local bin=$1 data=$2 feeder=$3 t0 e state big=0 ooo=0 ckpt=0 lvl=0 now then cut wbl busy deleted=0
	start_prometheus "$bin" "$data"
	FEED_LOG=$WORK/prom/feeder.log
	"$feeder" -listen "127.0.0.1:$FEED_PORT" -remote-write "http://127.0.0.1:$PROM_PORT/api/v1/write" \
		>"$FEED_LOG" 2>&1 9>&- &
	FEED_PID=$!
	t0=$SECONDS
	while :; do
		e=$((SECONDS - t0))
		pid_alive "$PROM_PID" || die "prometheus exited unexpectedly"
		pid_alive "$FEED_PID" || die "the feeder exited unexpectedly"
		look "$data"
		# now/then: see pending() in scripts/lib/gen_tsdb3.py. The next block cut (in cut ms) may compact
		# what the test needs, so it must be far enough off for the delete and the stop.
		if ((e >= MIN_RUN)) && ready; then
			# delete_series takes the compaction lock (tsdb/db.go: Delete, like Compact, holds
			# cmtx), so once it has returned no compaction is under way: look again. A head
			# compaction that was running compacts the out-of-order head after it and then
			# deletes the WBL segments it had (a CI run lost all of wbl/ that way).
			delete_series "$data"
			deleted=1
			look "$data"
			ready && break
			log "a compaction was under way at ${e}s; waiting for the next chance"
		fi
		((e < MAX_RUN)) || break
		sleep 1
	done
	log "after ${e}s: largest block chunk $big bytes, $ooo out-of-order blocks, WAL checkpoint: $ckpt, highest compaction level $lvl, blocks it would compact now: $now, in a test: $then (next block cut in ${cut} ms), newest wbl/ segment: $wbl bytes, compactions or checkpoints under way: $busy"
	((big >= BIG_CHUNK)) || die "no block chunk of 1 MiB or more after ${e}s"
	((ooo > 0)) || die "no out-of-order block after ${e}s"
	((ckpt > 0)) || log "note: no WAL checkpoint after ${e}s"
	((deleted)) || delete_series "$data"

	log "stopping prometheus (pid $PROM_PID) with SIGTERM after $((SECONDS - t0))s (it writes the chunk snapshot)"
	local pid=$PROM_PID
	PROM_PID=""
	stop_pid "$pid" "$STOP_TIMEOUT" || die "prometheus did not exit cleanly"
	grep -q 'chunk snapshot complete' "$PROM_LOG" || die "prometheus wrote no chunk snapshot"
	pid=$FEED_PID
	FEED_PID=""
	stop_pid "$pid" 10 || log "note: the feeder exited with status $?"
	PROM_LOG="" FEED_LOG=""
}

# ------------------------------------------------------------------ build
build_tsdb() {
	local bin feeder range t0=$SECONDS
	exec 9>"$OUT.lock"
	flock 9
	if [[ -e $OUT.complete ]]; then
		log "$OUT is already complete; nothing to do"
		exec 9>&-
		return 0
	fi
	if [[ -e $OUT ]]; then
		if [[ -d $OUT && -z $(ls -A -- "$OUT") ]]; then
			rmdir -- "$OUT"
		else
			die "$OUT exists but $OUT.complete does not; remove it and re-run"
		fi
	fi
	rm -rf -- "$OUT".tmp.[0-9]*
	bin=$(prom_bin)
	feeder=$(feeder_bin)
	TMP_OUT=$OUT.tmp.$$
	mkdir -p -- "$TMP_OUT"

	range=$(helper backfill "$WORK/backfill.om" 4 3600)
	"$bin/promtool" tsdb create-blocks-from openmetrics -q "$WORK/backfill.om" "$TMP_OUT" >"$WORK/promtool.log" 2>&1 ||
		{ cat "$WORK/promtool.log" >&2; die "promtool tsdb create-blocks-from openmetrics failed"; }
	log "promtool $("$bin/promtool" --version 2>&1 | head -n 1 | awk '{print $3}') backfilled unix ${range/ / .. } into 2h blocks"

	run_server "$bin" "$TMP_OUT" "$feeder"
	helper check "$TMP_OUT" "$((MIN_BLOCK * 1000))" "$((MAX_BLOCK * 1000))" || die "the TSDB lacks a promised feature (above)"

	# promtool tsdb list opens the DB read-only (a sandbox dir inside it, removed on close).
	log "promtool tsdb list:"
	"$bin/promtool" tsdb list -r "$TMP_OUT" >&2 || die "promtool tsdb list failed"
	[[ -z $(find "$TMP_OUT" -maxdepth 1 -name 'tmp_dbro_sandbox*' -print -quit) ]] ||
		die "promtool left a sandbox directory in $TMP_OUT"
	helper summary "$TMP_OUT" >&2

	mv -T -- "$TMP_OUT" "$OUT"
	TMP_OUT=""
	touch -- "$OUT.complete"
	exec 9>&-
	log "done: $OUT in $((SECONDS - t0))s"
}

if ((FEEDER_ONLY)); then
	feeder_bin
else
	build_tsdb
fi
