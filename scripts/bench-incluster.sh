#!/usr/bin/env bash
#
# bench-incluster.sh - a target written through a receiver pod (issue 17) against what a person
# would do by hand, on the real test node (scripts/test-node.sh: kube-apiserver, kubelet,
# containerd, runc on 127.0.0.1), into a claim on a `local:` PV in a namespace where Pod
# Security enforces `restricted`. Measurements, not assertions: the goal of the issue is shown
# beside them; the script exits non-zero only when a tool fails or a copy comes out incomplete.
#
# Per round (interleaved: odd rounds promigrate first, even rounds by hand first), each run
# starting from an empty volume directory (emptied as root on the host: it is a local PV) and a
# dropped page cache, timed with bash's $EPOCHREALTIME from start to exit:
#   * promigrate: `promigrate apply --yes` of a plan whose target has `kubernetes` and no
#     `path` (`receiver.image` = the node's busybox stand-in, PROMIGRATE_RECEIVER_BINARY = the
#     `make static` binary, which is also the promigrate that runs here). Includes the access
#     check, the receiver pod's start, the upload of the binary, the copy (every file fsync'ed,
#     renamed into place, owner and modes set) and the pod's deletion, waited for until gone.
#   * by hand: a pod on the claim (same image, same restricted securityContext as the receiver
#     pod: runAsUser 1000, runAsGroup/fsGroup 2000, no privilege escalation, no capabilities,
#     seccomp RuntimeDefault, grace period 1 s), `kubectl wait` until Ready,
#     `tar -cf - -C SRC . | kubectl exec -i POD -- sh -c 'mkdir -p DIR && exec tar -xf - -C DIR'`,
#     `kubectl exec POD -- sync`, `kubectl delete pod POD` (waits until gone).
#   After each: a `sync -f` on the host, timed apart (not in the throughput: both runs end
#   durable already), and a check that the volume holds every file and byte of the source
#   (containerd 1.6's exec can cut stdin short: an incomplete copy fails the bench).
#   * verify: `promigrate verify` (checksum level) after promigrate's apply, cache dropped,
#     its own pod start and upload included; reported apart, not in the throughput.
#
# CPU (user + system), per run:
#   * here: /usr/bin/time of promigrate, or of the by-hand script (every kubectl and tar it
#     runs: rusage counts waited-for children);
#   * in the pod: cpuacct of the kubelet's cgroup root (/sys/fs/cgroup/cpuacct/promigrate-node,
#     cgroup v1; hierarchical, so a pod's usage stays counted there after its cgroup is gone):
#     the container's processes and every process exec'd into it;
#   * the relays of the exec stream and the pod's life: kube-apiserver, kubelet, containerd
#     (/proc/PID/stat of the node's daemons, from their pid files), the pod's
#     containerd-shim (sampled every 0.2 s while it lives: it exits with the pod), etcd and
#     kube-controller-manager;
#   * the whole machine (/proc/stat), which also holds kernel writeback and anything else.
#
# Usage: scripts/bench-incluster.sh [--gib N] [--rounds N] [--parallelism N] [--no-verify]
#                                   [--out FILE]
#   --gib N          data size in GiB (default 1): target/fixtures/bench-blocks-<N>gib
#   --rounds N       interleaved rounds (default 5)
#   --parallelism N  promigrate's transfer.parallelism (default 4, as scripts/bench.sh)
#   --no-verify      skip the verify runs
#   --out FILE       Markdown results (default target/bench/results-incluster.md); the raw
#                    measurements go to the same name with .tsv
#
# PROMIGRATE_BENCH_BINARY=PATH uses that static promigrate instead of `make static` (to
# compare two builds on the same machine state). PROMIGRATE_BENCH_LOG=FILTER is the RUST_LOG of
# promigrate's apply runs (default info; e.g. promigrate=debug), kept in the logs below.
#
# Needs root (the node, the page cache, emptying the PV's directory), what scripts/test-node.sh
# needs (built once by `scripts/test-node.sh build`, which `make test` runs), cargo, GNU time.
#
# The node: one per host. Like TestNode::up() (tests/common/node.rs) this holds
# /run/lock/promigrate-node-tests.lock from before `up` until after `down`, so it waits for a
# test's node and a test waits for it; a node that a killed run of this bench (or a killed test)
# left up is taken down first. Cleanup on every exit: the node down (its pods, mounts, cgroups),
# the run directory /tmp/promigrate-bench-incluster.XXXXXX removed (never while something is
# mounted below it), the processes this script started stopped by their PIDs. Kept: every
# run's output and log in target/bench/incluster-logs/, also after a failure.

set -euo pipefail

readonly PROG=${0##*/}
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly ROOT
BENCH_PY=$ROOT/scripts/lib/bench.py
TESTS_LOCK=/run/lock/promigrate-node-tests.lock
HOST_LOCK=/run/lock/promigrate-node.lock
RUN_PREFIX=promigrate-bench-incluster.
TEST_PREFIX=promigrate-testnode-
NS=bench-incluster
CLAIM=data-prometheus-0
PV=pv-bench-incluster
SUBPATH=prometheus-db

log() { printf '%s [%(%H:%M:%S)T] %s\n' "$PROG" -1 "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage() { sed -n '/^# Usage:/,/^#                    measurements/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

GIB=1 ROUNDS=5 PARALLELISM=4 VERIFY=1 OUT=""
need_val() { [[ $2 -ge 2 ]] || die "option $1 needs a value"; }
while (($#)); do
	case $1 in
	--gib) need_val "$1" "$#"; GIB=$2; shift 2 ;;
	--rounds) need_val "$1" "$#"; ROUNDS=$2; shift 2 ;;
	--parallelism) need_val "$1" "$#"; PARALLELISM=$2; shift 2 ;;
	--no-verify) VERIFY=0; shift ;;
	--out) need_val "$1" "$#"; OUT=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done
[[ $GIB =~ ^[0-9]+([.][0-9]+)?$ && ! $GIB =~ ^0+([.]0+)?$ ]] || die "--gib must be a positive number"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $PARALLELISM =~ ^[1-9][0-9]*$ ]] || die "--parallelism must be a positive integer"
[[ $(id -u) -eq 0 ]] || die "run as root (the test node, dropping the page cache, emptying the PV's directory)"
for cmd in cargo make python3 tar flock findmnt sync setsid; do
	command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd"
done
{ [[ -x /usr/bin/time ]] && /usr/bin/time -f %e true 2>/dev/null; } ||
	die "GNU time is needed at /usr/bin/time (Debian: apt-get install -y time)"
[[ -n ${EPOCHREALTIME:-} ]] || die "bash >= 5 is needed (\$EPOCHREALTIME)"

BENCH=$ROOT/target/bench
[[ -n $OUT ]] || OUT=$BENCH/results-incluster.md
mkdir -p -- "$BENCH" "$(dirname -- "$OUT")"
OUT=$(cd -- "$(dirname -- "$OUT")" && pwd -P)/$(basename -- "$OUT")
TSV_OUT=${OUT%.md}.tsv
[[ $TSV_OUT != "$OUT" ]] || TSV_OUT=$OUT.tsv

# ------------------------------------------------------------------ cleanup
WORK="" STATE="" NODE_UP=0 CHILD="" SAMPLER=""
# mounted_below DIR: something is mounted at or below DIR.
mounted_below() { findmnt -rn -o TARGET | awk -v s="$1/" 'index($0 "/", s) == 1 {f = 1} END {exit !f}'; }
node_down() { # STATE_DIR
	bash "$ROOT/scripts/test-node.sh" down "$1" 9>&- >&2
}
on_exit() {
	local rc=$?
	trap - EXIT
	set +e
	for p in "$CHILD" "$SAMPLER"; do
		[[ -n $p ]] || continue
		kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	if ((NODE_UP)); then
		log "taking the node down"
		node_down "$STATE" || log "WARNING: scripts/test-node.sh down $STATE failed"
	fi
	if [[ -n $WORK && -d $WORK/run/logs ]]; then
		# Every run's output and log (promigrate's has the upload's time), also after a failure.
		rm -rf -- "$BENCH/incluster-logs"
		cp -r -- "$WORK/run/logs" "$BENCH/incluster-logs"
		[[ ! -f $WORK/run/measurements.tsv ]] || cp -- "$WORK/run/measurements.tsv" "$BENCH/incluster-logs/"
		log "logs of the runs: $BENCH/incluster-logs"
	fi
	if [[ -n $WORK && -d $WORK ]]; then
		if mounted_below "$WORK"; then
			log "WARNING: something is still mounted below $WORK: leaving it in place"
		else
			rm -rf -- "$WORK"
		fi
	fi
	((rc == 0)) || printf '%s: FAILED (exit %d)\n' "$PROG" "$rc" >&2
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ------------------------------------------------------- the binary, the data
if [[ -n ${PROMIGRATE_BENCH_BINARY:-} ]]; then
	# Another build to compare (e.g. an older commit's `make static`).
	STATIC=$PROMIGRATE_BENCH_BINARY
	log "the static promigrate: $STATIC (PROMIGRATE_BENCH_BINARY)"
else
	log "building the static promigrate (make static)"
	STATIC=$(cd "$ROOT" && nice -n 10 make -s static | tail -n 1) || die "make static failed"
fi
[[ $STATIC == /* ]] || STATIC=$ROOT/$STATIC
[[ -x $STATIC ]] || die "make static made no $STATIC"
FIX=$ROOT/target/fixtures
DATA=$FIX/bench-blocks-${GIB}gib
log "making the data set (cached): $DATA"
bash "$ROOT/scripts/gen-tsdb.sh" "$FIX/tsdb" --replicate-to "$DATA" --gib "$GIB" >&2 || die "gen-tsdb.sh failed"
[[ -e $DATA.complete ]] || die "gen-tsdb.sh did not complete $DATA"
# "bytes files" of the regular files below $1 (promigrate's own .promigrate* at its top left out)
tree_stats() {
	find "$1" -type f ! -path "$1/.promigrate*" -printf '%s\n' | awk '{b += $1; n++} END {printf "%.0f %d\n", b, n}'
}
DATA_STATS=$(tree_stats "$DATA")

# ------------------------------------------------------------- the node lock
exec 9>>"$TESTS_LOCK"
if ! flock -n 9; then
	log "waiting for another test's or bench's node to go down ($TESTS_LOCK)"
	flock 9
fi
# Holding the lock, nobody uses a node that a killed test or bench left: take it down (as
# TestNode::up's down_orphan does), and its run directory unless something is mounted there.
owner=$(head -n 1 "$HOST_LOCK" 2>/dev/null || true)
if [[ $owner == */state && -d $owner ]]; then
	oroot=${owner%/state}
	case ${oroot##*/} in
	"$RUN_PREFIX"* | "$TEST_PREFIX"*)
		log "taking down $owner, the node of a bench or test that died"
		if node_down "$owner" && ! mounted_below "$oroot"; then rm -rf -- "$oroot"; fi
		;;
	esac
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/${RUN_PREFIX}XXXXXX")
STATE=$WORK/state
VOL=$WORK/volumes/pv
RUN=$WORK/run
LOGS=$RUN/logs
mkdir -p "$WORK/volumes" "$LOGS"
mkdir -m 0755 "$VOL"
BIN=$RUN/promigrate
cp -- "$STATIC" "$BIN"
TSV=$RUN/measurements.tsv
FACTS=$RUN/facts.tsv
: >"$FACTS"
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
busy_procs() {
	ps -eo pid=,pcpu=,comm= --sort=-pcpu | awk -v me=$$ '
		$1 != me && $3 != "ps" && $2 >= 5 {printf "%s%s %s%%", (n++ ? ", " : ""), $3, $2}
		END {if (!n) printf "none"}'
}
fact uptime_start "$(uptime)"
fact procs_start "$(busy_procs)"
read -r _ _ LOAD15_START _ </proc/loadavg

# ------------------------------------------------------------------ the node
log "starting the test node in $STATE"
NODE_UP=1
ENV_FILE=$(bash "$ROOT/scripts/test-node.sh" up "$STATE" 9>&- | tail -n 1) || die "scripts/test-node.sh up failed"
# shellcheck disable=SC1090
. "$ENV_FILE"
export KUBECONFIG
KUBECTL=("$PROMIGRATE_NODE_KUBECTL" --kubeconfig "$KUBECONFIG")
IMAGE=$PROMIGRATE_NODE_STANDIN_IMAGE
k() { "${KUBECTL[@]}" "$@"; }

k apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "$NS", "labels": {
  "pod-security.kubernetes.io/enforce": "restricted",
  "pod-security.kubernetes.io/enforce-version": "latest"}}}
EOF
# Pre-bound from the PV's side (spec.claimRef): binds at once (see docs/development.md).
k apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "$PV"}, "spec": {
   "capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce"],
   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local-manual",
   "claimRef": {"namespace": "$NS", "name": "$CLAIM"},
   "local": {"path": "$VOL"},
   "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
     {"key": "kubernetes.io/hostname", "operator": "In", "values": ["$PROMIGRATE_NODE_NAME"]}]}]}}}},
 {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "$CLAIM", "namespace": "$NS"},
  "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-manual",
   "resources": {"requests": {"storage": "100Gi"}}}}]}
EOF
k wait -n "$NS" --for=jsonpath='{.status.phase}'=Bound "pvc/$CLAIM" --timeout=60s >/dev/null ||
	die "claim $NS/$CLAIM not Bound"

PLAN=$RUN/plan.yaml
cat >"$PLAN" <<EOF
apiVersion: promigrate/v1
kind: Migration
metadata:
  name: bench-incluster
source:
  path: $DATA
target:
  subPath: $SUBPATH
  securityContext:
    runAsUser: 1000
    fsGroup: 2000
  kubernetes:
    kubeconfig: $KUBECONFIG
    namespace: $NS
    persistentVolume: $PV
    persistentVolumeClaim: $CLAIM
    waitTimeout: 120s
    receiver:
      image: $IMAGE
transfer:
  parallelism: $PARALLELISM
EOF

# The by-hand run: what a person types, each step's end time on fd 3 ("step seconds").
HAND=$RUN/by-hand.sh
cat >"$HAND" <<'EOF'
#!/usr/bin/env bash
# by-hand.sh POD SRC NS IMAGE CLAIM SUBPATH NODE KUBECTL...: a pod on the claim (on NODE, as
# the receiver pod, which takes it from the PV's node affinity: no scheduling on either), tar
# through kubectl exec, sync, the pod deleted; prints "step end_epoch" lines on fd 3.
set -euo pipefail
pod=$1 src=$2 ns=$3 image=$4 claim=$5 sub=$6 node=$7
shift 7
kubectl=("$@")
mark() { echo "$1 $EPOCHREALTIME" >&3; }
"${kubectl[@]}" create -n "$ns" -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$pod"}, "spec": {
  "nodeName": "$node", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
  "automountServiceAccountToken": false,
  "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 2000,
    "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
  "containers": [{"name": "main", "image": "$image", "imagePullPolicy": "IfNotPresent",
    "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait \$!; done"],
    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
    "volumeMounts": [{"name": "volume", "mountPath": "/vol"}]}],
  "volumes": [{"name": "volume", "persistentVolumeClaim": {"claimName": "$claim"}}]}}
JSON
mark created
"${kubectl[@]}" wait -n "$ns" --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null
mark ready
tar -cf - -C "$src" . | "${kubectl[@]}" exec -i -n "$ns" "$pod" -- sh -c "mkdir -p /vol/$sub && exec tar -xf - -C /vol/$sub"
mark copied
"${kubectl[@]}" exec -n "$ns" "$pod" -- sync
mark synced
"${kubectl[@]}" delete -n "$ns" pod "$pod" --wait=true >/dev/null
mark deleted
EOF

# ------------------------------------------------------------- measurements
CGROUP=/sys/fs/cgroup/cpuacct/promigrate-node
[[ -f $CGROUP/cpuacct.usage_user ]] || die "no $CGROUP/cpuacct.usage_user (cgroup v1 cpuacct expected: see docs/development.md)"
SOCK=$PROMIGRATE_NODE_CONTAINERD
pid_of() { cat "$1.pid"; }
DAEMONS="kube-apiserver=$STATE/cp/kube-apiserver kubelet=$STATE/kubelet containerd=$STATE/containerd etcd=$STATE/cp/etcd kube-controller-manager=$STATE/cp/kube-controller-manager"
# ticks PID: utime + stime + cutime + cstime of PID (clock ticks), or 0 if it is gone.
ticks() {
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || {
		echo 0
		return
	}
	s=${s##*) }
	# fields after "(comm) ": state=1 ... utime=12 stime=13 cutime=14 cstime=15
	awk '{print $12 + $13 + $14 + $15}' <<<"$s"
}
# counters: "name=value ..." of every CPU counter (whole machine in ticks, the pod cgroup in ns).
counters() {
	local c u n s _idle w irq sirq st _rest d out
	read -r c u n s _idle w irq sirq st _rest </proc/stat
	out="machine=$((u + n + s + irq + sirq + st)) iowait=$w"
	out+=" pod_user_ns=$(cat $CGROUP/cpuacct.usage_user) pod_sys_ns=$(cat $CGROUP/cpuacct.usage_sys)"
	for d in $DAEMONS; do out+=" ${d%%=*}=$(ticks "$(pid_of "${d#*=}")")"; done
	echo "$out"
}
# The pod's containerd-shim exits with the pod: sample every shim of our containerd every
# 0.2 s into $1 ("pid ticks" lines; the last line per pid is its CPU).
shim_sampler() {
	local out=$1 p args
	while :; do
		for p in /proc/[0-9]*; do
			args=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
			case $args in *containerd-shim*" -address $SOCK "*) echo "${p#/proc/} $(ticks "${p#/proc/}")" ;; esac
		done >>"$out"
		sleep 0.2
	done
}
empty_volume() {
	# No pod mounts it between runs (each run deletes its pod and waits until it is gone).
	find "$VOL" -mindepth 1 -delete
	[[ -z $(ls -A "$VOL") ]] || die "could not empty $VOL"
}
drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

printf 'kind\tround\ttool\tpos\tt0\tt1\tt2\tload1\tuser_s\tsys_s\tmaxrss_kib\tbefore\tafter\tshims\tsteps\tjson\n' >"$TSV"
# measure KIND ROUND TOOL POS -- CMD...: one timed run (start to exit, then `sync -f` on the
# volume timed apart), its CPU counters, one TSV row. Dies if the run fails.
measure() {
	local kind=$1 round=$2 tool=$3 pos=$4
	shift 5
	local id=$kind-r$round-$tool
	local tv=$LOGS/$id.time out=$LOGS/$id.out err=$LOGS/$id.err steps=$LOGS/$id.steps shims=$LOGS/$id.shims
	local load c0 c1 t0 t1 t2 rc=0 user sys rss js sh
	: >"$shims"
	: >"$steps"
	read -r load _ </proc/loadavg
	setsid bash -c "$(declare -f shim_sampler ticks); SOCK='$SOCK'; shim_sampler '$shims'" &
	SAMPLER=$!
	c0=$(counters)
	t0=$EPOCHREALTIME
	setsid /usr/bin/time -f '%U %S %M' -o "$tv" "$@" >"$out" 2>"$err" 3>"$steps" &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=""
	t1=$EPOCHREALTIME
	((rc != 0)) || sync -f -- "$VOL" || rc=$?
	t2=$EPOCHREALTIME
	c1=$(counters)
	kill -TERM -- "-$SAMPLER" 2>/dev/null
	wait "$SAMPLER" 2>/dev/null || true
	SAMPLER=""
	if ((rc != 0)); then
		printf '%s: %s failed (exit %d): %s\n--- stderr (last 30 lines):\n' "$PROG" "$id" "$rc" "$*" >&2
		tail -n 30 -- "$err" >&2 || true
		printf -- '--- stdout (last 10 lines):\n' >&2
		tail -n 10 -- "$out" >&2 || true
		die "$id failed"
	fi
	read -r user sys rss <"$tv"
	sh=$(awk '{last[$1] = $2} END {for (p in last) {printf "%s%s:%s", (n++ ? "," : ""), p, last[p]}}' "$shims")
	js=-
	if [[ $tool == promigrate ]]; then
		js=$(python3 "$BENCH_PY" incluster-log "$out" "$err")
		[[ $js == *'"ok":true'* ]] || die "$id: promigrate's report is not ok: $js"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$round" "$tool" "$pos" \
		"$t0" "$t1" "$t2" "$load" "$user" "$sys" "$rss" "$c0" "$c1" "${sh:--}" \
		"$(tr '\n' ',' <"$steps" | sed 's/,$//')" "$js" >>"$TSV"
	log "  $id: $(python3 -c 'import sys; a, b, c = map(float, sys.argv[1:]); print("%.2f s (then sync -f %.2f s)" % (b - a, c - b))' "$t0" "$t1" "$t2"), CPU here ${user} user + ${sys} sys"
}
# check_volume LABEL: the volume holds every file and byte of the source.
check_volume() {
	local got
	got=$(tree_stats "$VOL/$SUBPATH")
	[[ $got == "$DATA_STATS" ]] || die "$1: the volume holds 'bytes files' = '$got', the source '$DATA_STATS': incomplete copy"
}

run_promigrate() { # ROUND POS
	empty_volume
	drop_caches
	measure apply "$1" promigrate "$2" -- env PROMIGRATE_RECEIVER_BINARY="$BIN" RUST_LOG=${PROMIGRATE_BENCH_LOG:-info} \
		"$BIN" apply -f "$PLAN" --yes --state-dir "$RUN/records" --output json
	check_volume "promigrate (round $1)"
	local o
	o=$(stat -c %u:%g "$VOL/$SUBPATH")
	[[ $o == 1000:2000 ]] || die "promigrate (round $1): $VOL/$SUBPATH is owned by $o, not 1000:2000"
	if ((VERIFY)); then
		drop_caches
		measure verify "$1" promigrate "$2" -- env PROMIGRATE_RECEIVER_BINARY="$BIN" RUST_LOG=info \
			"$BIN" verify -f "$PLAN" --state-dir "$RUN/records" --output json
	fi
}
run_by_hand() { # ROUND POS
	empty_volume
	drop_caches
	measure apply "$1" by-hand "$2" -- bash "$HAND" "by-hand-r$1" "$DATA" "$NS" "$IMAGE" "$CLAIM" "$SUBPATH" "$PROMIGRATE_NODE_NAME" "${KUBECTL[@]}"
	check_volume "by hand (round $1)"
}

fact date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
fact nproc "$(nproc)"
fact cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
fact kernel "$(uname -sr)"
MNT=$(df --output=target "$VOL" | tail -n 1)
fact fs_mount "$(df --output=source "$VOL" | tail -n 1) on $MNT ($(awk -v m="$MNT" '$2 == m {t = $3; o = $4} END {print t ", " o}' /proc/mounts))"
fact same_fs "$([[ $(stat -c %d "$DATA") == $(stat -c %d "$VOL") ]] && echo yes || echo NO)"
fact promigrate_version "$("$BIN" --version 2>&1 | head -n 1)"
fact promigrate_bytes "$(stat -c %s "$BIN")"
fact git_head "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
fact git_dirty "$(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null | wc -l | tr -d ' ') tracked file(s) modified"
fact kube "$("${KUBECTL[@]}" version -o json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null || echo ?)"
fact containerd "$(containerd --version | awk '{print $3}')"
fact runc "$(runc --version | head -n 1 | awk '{print $3}')"
fact tar "$(tar --version | head -n 1)"
fact image "$IMAGE"
fact data_dir "${DATA#"$ROOT"/}"
fact data_bytes "${DATA_STATS% *}"
fact data_files "${DATA_STATS#* }"
fact data_blocks "$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l)"
fact rounds "$ROUNDS"
fact parallelism "$PARALLELISM"
fact clk_tck "$(getconf CLK_TCK)"

log "data: ${DATA_STATS% *} bytes in ${DATA_STATS#* } files; $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
	log "round $r of $ROUNDS"
	if ((r % 2)); then
		run_promigrate "$r" 1
		run_by_hand "$r" 2
	else
		run_by_hand "$r" 1
		run_promigrate "$r" 2
	fi
done
left=$(k get pods -A -o name)
[[ -z $left ]] || die "pods left after the rounds: $left"

fact uptime_end "$(uptime)"
fact procs_end "$(busy_procs)"
read -r _ _ LOAD15_END _ </proc/loadavg
fact load15 "$LOAD15_START -> $LOAD15_END"

REPORT=$RUN/report.md
python3 "$BENCH_PY" report-incluster "$FACTS" "$TSV" >"$REPORT"
cp -- "$REPORT" "$OUT"
{
	printf '# raw measurements from scripts/bench-incluster.sh, %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	printf '# t0 start, t1 exit, t2 after `sync -f` on the volume (epoch s); before/after: CPU counters (machine, iowait, the daemons: clock ticks; pod_*: ns of cpuacct); shims: pid:ticks; steps: by-hand step end times\n'
	cat -- "$TSV"
	sed 's/^/# fact\t/' "$FACTS"
} >"$TSV_OUT"
cat -- "$REPORT"
log "results written to $OUT (raw: $TSV_OUT)"
