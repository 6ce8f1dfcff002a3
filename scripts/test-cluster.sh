#!/usr/bin/env bash
# A real, throwaway Kubernetes control plane on 127.0.0.1 for integration tests: etcd (Debian's
# etcd-server), kube-apiserver and kube-controller-manager (built from the k8s.io/kubernetes Go
# module with the machine's Go; no Docker, no prebuilt downloads). No scheduler, no kubelet:
# PV/PVC binding, the Released phase and StatefulSets work; pods stay Pending (scripts/test-node.sh
# adds a kubelet and containerd beside it).
#
# Usage:
#   scripts/test-cluster.sh build            build (or find cached) kube-apiserver,
#                                            kube-controller-manager, kubectl, kubelet and
#                                            kube-scheduler (for scripts/test-node.sh);
#                                            install etcd
#   scripts/test-cluster.sh up   [STATE_DIR] start everything; LAST stdout line = kubeconfig path
#   scripts/test-cluster.sh down [STATE_DIR] stop what `up` started (recorded PIDs), remove STATE_DIR
#   scripts/test-cluster.sh status [STATE_DIR]
#
# Environment:
#   PROMIGRATE_KUBE_VERSION      Kubernetes version to build (default v1.34.4)
#   PROMIGRATE_KUBE_CACHE        where binaries + wrapper module live
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/kube-<version>)
#   PROMIGRATE_KUBE_STATE        state dir when none is given as argument
#                                (default ${TMPDIR:-/tmp}/promigrate-kube-<uid>)
#   PROMIGRATE_KUBE_CONTROLLERS  kube-controller-manager --controllers value (default: the PV
#                                binder, PV protection, PVC protection, statefulset and garbage
#                                collector controllers)
#   PROMIGRATE_KUBE_APISERVER_FEATURE_GATES
#                                kube-apiserver --feature-gates value (default: none given), e.g.
#                                PortForwardWebsockets=false for an API server without the
#                                port-forward's SPDY tunnel (as before Kubernetes 1.31)
#   PROMIGRATE_KUBE_TIMEOUT      seconds to wait for each component to be ready (default 120)
#   PROMIGRATE_KUBE_BUILD_JOBS   go build -p (default 2)
#
# Everything `up` writes lives in STATE_DIR: kubeconfig, token, CA, logs (*.log), PIDs (*.pid),
# and an `env` file (KUBECONFIG=..., PROMIGRATE_KUBE_SERVER=..., PROMIGRATE_KUBE_TOKEN=...).
# Logs and progress go to stderr; stdout carries only the kubeconfig path.
set -euo pipefail

KUBE_VERSION=${PROMIGRATE_KUBE_VERSION:-v1.34.4}
CACHE=${PROMIGRATE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/kube-$KUBE_VERSION}
BIN=$CACHE/bin
DEFAULT_STATE=${PROMIGRATE_KUBE_STATE:-${TMPDIR:-/tmp}/promigrate-kube-$(id -u)}
# garbage-collector-controller is what deletes StatefulSet pods on cascading delete and the PVCs
# that persistentVolumeClaimRetentionPolicy marks for deletion (the statefulset controller only
# sets owner references).
CONTROLLERS=${PROMIGRATE_KUBE_CONTROLLERS:-persistentvolume-binder-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller,statefulset-controller,garbage-collector-controller}
TIMEOUT=${PROMIGRATE_KUBE_TIMEOUT:-120}
BUILD_JOBS=${PROMIGRATE_KUBE_BUILD_JOBS:-2}

log() { printf 'test-cluster: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# ---------------------------------------------------------------------------------------------
# build

ensure_etcd() {
	command -v etcd >/dev/null 2>&1 && return 0
	[ "$(id -u)" -eq 0 ] || die "etcd not found: install Debian's etcd-server as root (apt-get install etcd-server)"
	log "installing etcd-server (Debian package)"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq --no-install-recommends etcd-server >/dev/null 2>&1; then
		apt-get update -qq >/dev/null
		apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
	fi
	command -v etcd >/dev/null 2>&1 || die "etcd-server installed but no etcd on PATH"
}

# What `up` runs, and the kubelet and kube-scheduler, which scripts/test-node.sh runs beside
# them. `build` makes all five; `up` needs only the control plane's. A cache made before one was
# added gets it built and added, without touching the binaries already there (a running cluster
# uses them).
CONTROL_PLANE_CMDS=(kube-apiserver kube-controller-manager kubectl)
ALL_CMDS=("${CONTROL_PLANE_CMDS[@]}" kubelet kube-scheduler)

# missing_cmds CMD...: those of CMD... not (yet) in $BIN, one a line.
missing_cmds() {
	local c
	for c in "$@"; do [ -x "$BIN/$c" ] || echo "$c"; done
}

# build_kube CMD...: builds those of CMD... that $BIN lacks (k8s.io/kubernetes/cmd/CMD).
build_kube() {
	local missing
	missing=$(missing_cmds "$@")
	[ -n "$missing" ] || return 0
	command -v go >/dev/null 2>&1 || die "go not found: it is needed to build ${missing//$'\n'/ }"
	mkdir -p "$(dirname "$CACHE")"
	# One build at a time per version: a second `up` waits here, then finds the binaries.
	exec 9>"$CACHE.lock"
	if ! flock -n 9; then
		log "another process is building Kubernetes $KUBE_VERSION; waiting for its lock ($CACHE.lock)"
		flock 9
	fi
	missing=$(missing_cmds "$@")
	if [ -z "$missing" ]; then
		exec 9>&-
		return 0
	fi
	local cmds start=$SECONDS src=$CACHE/src buildlog=$CACHE/build.log minor
	mapfile -t cmds <<<"$missing"
	minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	local staging_version="v0.${KUBE_VERSION#v1.}"
	mkdir -p "$src"
	# Measured on 2 cores: all four cold 10-25 min; the kubelet alone with warm Go caches ~1 min.
	log "building ${cmds[*]} $KUBE_VERSION into $BIN (cold: up to 25 min; log: $buildlog)"
	(
		set -euo pipefail
		cd "$src"
		export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOWORK=off CGO_ENABLED=0
		export GOMAXPROCS=${GOMAXPROCS:-$BUILD_JOBS}
		local gomod
		gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
		[ -f "$gomod" ] || { echo "cannot download k8s.io/kubernetes@$KUBE_VERSION go.mod"; exit 1; }
		{
			echo "module promigrate.test/kubebuild"
			echo
			echo "go 1.24.0"
			echo
			echo "require k8s.io/kubernetes $KUBE_VERSION"
			echo
			echo "replace ("
			# Every k8s.io/* module kubernetes requires at v0.0.0 is a staging module, published as
			# v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
			sed -n 's/^[[:space:]]*\(k8s\.io\/[A-Za-z0-9._/-]*\) v0\.0\.0$/\1/p' "$gomod" | sort -u |
				while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
			echo ")"
		} >go.mod
		rm -f go.sum
		local pkgs=() c
		for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
		go get "${pkgs[@]/%/@$KUBE_VERSION}"
		local pkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version ld="-s -w" p
		for p in $pkg $cpkg; do
			ld="$ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
		done
		rm -rf "$CACHE/bin.tmp"
		mkdir -p "$CACHE/bin.tmp"
		go build -p "$BUILD_JOBS" -trimpath -ldflags "$ld" -o "$CACHE/bin.tmp/" "${pkgs[@]}"
	) >"$buildlog" 2>&1 || {
		tail -n 30 "$buildlog" >&2
		die "building Kubernetes $KUBE_VERSION failed (full log: $buildlog)"
	}
	# Each binary is renamed into place whole: a killed build never leaves half of one, and
	# the binaries already in $BIN stay as they are.
	mkdir -p "$BIN"
	local c
	for c in "${cmds[@]}"; do mv "$CACHE/bin.tmp/$c" "$BIN/$c"; done
	rm -rf "$CACHE/bin.tmp"
	log "built ${cmds[*]} $KUBE_VERSION in $((SECONDS - start)) s"
	exec 9>&-
}

cmd_build() {
	ensure_etcd
	build_kube "${ALL_CMDS[@]}"
	log "binaries: $BIN"
	echo "$BIN"
}

# ---------------------------------------------------------------------------------------------
# processes: free_ports, is_ours, wait_gone, stop_one, start (scripts/lib/daemons.sh)

# shellcheck source=lib/daemons.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib/daemons.sh"

stop_all() {
	local state=$1
	stop_one "$state" kube-controller-manager
	stop_one "$state" kube-apiserver
	stop_one "$state" etcd
}

# wait_for NAME URL WANT CURL-ARGS...: until the body from URL contains every line of WANT
# (empty WANT: starts with "ok"), while NAME is alive.
wait_for() {
	local name=$1 url=$2 want=$3 deadline=$((SECONDS + TIMEOUT)) out line ready
	shift 3
	while :; do
		out=$(curl -fsS --max-time 5 "$@" "$url" 2>/dev/null) || out=
		if [ -n "$out" ]; then
			if [ -z "$want" ]; then
				[[ $out == ok* ]] && return 0
			else
				ready=1
				while IFS= read -r line; do
					[[ $out == *"$line"* ]] || ready=0
				done <<<"$want"
				[ $ready -eq 0 ] || return 0
			fi
		fi
		if ! is_ours "$STATE" "$name"; then
			tail -n 40 "$STATE/$name.log" >&2 || true
			fail "$name exited before it was ready (log: $STATE/$name.log)"
		fi
		if [ $SECONDS -ge $deadline ]; then
			tail -n 40 "$STATE/$name.log" >&2 || true
			[ -z "$out" ] || printf '%s\n' "$out" >&2
			fail "$name not ready at $url after ${TIMEOUT}s (log: $STATE/$name.log)"
		fi
		sleep 0.2
	done
}

# fail MSG: abort `up`; its EXIT trap (up_exit) stops whatever it had started.
fail() {
	log "ERROR: $*"
	exit 1
}

UP_OK=0
up_exit() {
	[ "$UP_OK" = 1 ] && return 0
	log "up failed: stopping what was started; logs kept in $STATE"
	stop_all "$STATE"
}

gen_certs() {
	local d=$STATE/pki
	mkdir -p "$d"
	(
		set -euo pipefail
		cd "$d"
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
			-keyout ca.key -out ca.crt -subj "/CN=promigrate-test-ca" \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
		cat >server.ext <<-'EOF'
			basicConstraints=critical,CA:FALSE
			keyUsage=critical,digitalSignature,keyEncipherment
			extendedKeyUsage=serverAuth
			subjectAltName=IP:127.0.0.1,DNS:localhost
		EOF
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
			-keyout server.key -out server.csr -subj "/CN=127.0.0.1"
		openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
			-extfile server.ext -out server.crt
		openssl genrsa -out sa.key 2048
		openssl rsa -in sa.key -pubout -out sa.pub
		chmod 600 ./*.key
	) >"$STATE/openssl.log" 2>&1 || fail "openssl failed (log: $STATE/openssl.log)"
}

write_kubeconfig() {
	local file=$1 server=$2 token=$3 ca
	ca=$(base64 -w0 <"$STATE/pki/ca.crt")
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: promigrate-test
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: promigrate-test-admin
  user:
    token: $token
contexts:
- name: promigrate-test
  context:
    cluster: promigrate-test
    user: promigrate-test-admin
    namespace: default
current-context: promigrate-test
EOF
	chmod 600 "$file"
}

cmd_up() {
	STATE=$(resolve_state "${1:-}")
	local t0=$SECONDS
	if [ -d "$STATE" ]; then
		for n in etcd kube-apiserver kube-controller-manager; do
			is_ours "$STATE" "$n" && die "a cluster is already running in $STATE ($n pid $(cat "$STATE/$n.pid")); run: $0 down $STATE"
		done
		[ -f "$STATE/.promigrate-test-cluster" ] || [ -z "$(ls -A "$STATE")" ] ||
			die "$STATE exists and is not a test-cluster state dir; refusing to use it"
		rm -rf "$STATE"
	fi
	ensure_etcd
	build_kube "${CONTROL_PLANE_CMDS[@]}"
	command -v openssl >/dev/null 2>&1 || die "openssl not found"
	command -v curl >/dev/null 2>&1 || die "curl not found"
	mkdir -p "$STATE"
	chmod 700 "$STATE"
	touch "$STATE/.promigrate-test-cluster"
	trap up_exit EXIT
	trap 'fail "interrupted"' INT TERM HUP

	gen_certs
	local token etcd_port peer_port api_port kcm_port
	token=$(openssl rand -hex 32)
	printf '%s' "$token" >"$STATE/token"
	printf '%s,promigrate-test-admin,promigrate-test-admin,"system:masters"\n' "$token" >"$STATE/tokens.csv"
	chmod 600 "$STATE/token" "$STATE/tokens.csv"
	local ports
	mapfile -t ports < <(free_ports 4)
	[ "${#ports[@]}" -eq 4 ] || fail "could not find free ports"
	etcd_port=${ports[0]} peer_port=${ports[1]} api_port=${ports[2]} kcm_port=${ports[3]}

	# etcd ---------------------------------------------------------------------------------
	local etcd_url=http://127.0.0.1:$etcd_port peer_url=http://127.0.0.1:$peer_port etcd_extra=()
	local etcd_help
	etcd_help=$(etcd --help 2>&1 || true)
	# Newer etcd can skip fsync: test data is throwaway.
	[[ $etcd_help == *--unsafe-no-fsync* ]] && etcd_extra+=(--unsafe-no-fsync)
	# Periodic watch progress notifications (kubeadm sets 5s): without them the apiserver's watch
	# caches of idle resources never advance with etcd 3.4 (which lacks RequestWatchProgress),
	# it logs "Too large resource version" timeouts after a minute and SIGTERM takes 7-10+ s.
	if [[ $etcd_help == *--watch-progress-notify-interval* && $etcd_help != *--experimental-watch-progress-notify-interval* ]]; then
		etcd_extra+=(--watch-progress-notify-interval=1s)
	elif [[ $etcd_help == *--experimental-watch-progress-notify-interval* ]]; then
		etcd_extra+=(--experimental-watch-progress-notify-interval=1s)
	fi
	start etcd "$(command -v etcd)" \
		--name=promigrate-test --data-dir="$STATE/etcd" \
		--listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
		--listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
		--initial-cluster="promigrate-test=$peer_url" --initial-cluster-state=new \
		"${etcd_extra[@]}"
	local deadline=$((SECONDS + TIMEOUT))
	local out
	while :; do
		out=$(curl -fsS --max-time 2 "$etcd_url/health" 2>/dev/null) || out=
		[[ $out == *'"health":"true"'* ]] && break
		is_ours "$STATE" etcd || {
			tail -n 40 "$STATE/etcd.log" >&2 || true
			fail "etcd exited before it was ready (log: $STATE/etcd.log)"
		}
		[ $SECONDS -lt $deadline ] || fail "etcd not healthy at $etcd_url after ${TIMEOUT}s (log: $STATE/etcd.log)"
		sleep 0.1
	done
	log "etcd ready on $etcd_url"

	# kube-apiserver -------------------------------------------------------------------------
	local server=https://127.0.0.1:$api_port
	mkdir -p "$STATE/apiserver-certs"
	local gates=()
	[[ -z ${PROMIGRATE_KUBE_APISERVER_FEATURE_GATES:-} ]] || gates=(--feature-gates="$PROMIGRATE_KUBE_APISERVER_FEATURE_GATES")
	start kube-apiserver "$BIN/kube-apiserver" "${gates[@]}" \
		--etcd-servers="$etcd_url" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
		--cert-dir="$STATE/apiserver-certs" \
		--tls-cert-file="$STATE/pki/server.crt" --tls-private-key-file="$STATE/pki/server.key" \
		--service-cluster-ip-range=10.0.0.0/24 \
		--endpoint-reconciler-type=none \
		--allow-privileged=true \
		--authorization-mode=RBAC \
		--token-auth-file="$STATE/tokens.csv" \
		--disable-admission-plugins=ServiceAccount \
		--service-account-issuer="$server" \
		--service-account-key-file="$STATE/pki/sa.pub" \
		--service-account-signing-key-file="$STATE/pki/sa.key"
	wait_for kube-apiserver "$server/readyz" "" --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $token"
	log "kube-apiserver ready on $server"

	local kubeconfig=$STATE/kubeconfig
	write_kubeconfig "$kubeconfig" "$server" "$token"

	# kube-controller-manager ----------------------------------------------------------------
	# It serves only /healthz and friends (always allowed, no token) on a loopback port, so
	# readiness can be checked: /healthz?verbose lists "[+]<controller> ok" once each has started.
	local want="healthz check passed" c ctrls
	IFS=, read -ra ctrls <<<"$CONTROLLERS"
	for c in "${ctrls[@]}"; do
		case $c in -* | '*' | '') ;; *) want+=$'\n'"[+]$c ok" ;; esac
	done
	start kube-controller-manager "$BIN/kube-controller-manager" \
		--kubeconfig="$kubeconfig" \
		--leader-elect=false \
		--bind-address=127.0.0.1 --secure-port="$kcm_port" \
		--cert-dir="$STATE/kcm-certs" \
		--tls-cert-file="$STATE/pki/server.crt" --tls-private-key-file="$STATE/pki/server.key" \
		--use-service-account-credentials=false \
		--controllers="$CONTROLLERS"
	wait_for kube-controller-manager "https://127.0.0.1:$kcm_port/healthz?verbose" "$want" --cacert "$STATE/pki/ca.crt"
	log "kube-controller-manager ready (controllers: $CONTROLLERS)"

	{
		echo "KUBECONFIG=$kubeconfig"
		echo "PROMIGRATE_KUBE_SERVER=$server"
		echo "PROMIGRATE_KUBE_CA=$STATE/pki/ca.crt"
		echo "PROMIGRATE_KUBE_TOKEN=$token"
		echo "PROMIGRATE_KUBE_STATE=$STATE"
	} >"$STATE/env"
	chmod 600 "$STATE/env"
	UP_OK=1
	trap - INT TERM HUP
	log "cluster up in $((SECONDS - t0)) s: Kubernetes $KUBE_VERSION at $server; stop with: $0 down $STATE"
	echo "$kubeconfig"
}

cmd_down() {
	local state
	state=$(resolve_state "${1:-}")
	if [ ! -d "$state" ]; then
		log "nothing to stop: $state does not exist"
		return 0
	fi
	[ -f "$state/.promigrate-test-cluster" ] || die "$state is not a test-cluster state dir; refusing to touch it"
	stop_all "$state"
	rm -rf "$state"
	log "stopped; removed $state"
}

cmd_status() {
	local state rc=0
	state=$(resolve_state "${1:-}")
	for n in etcd kube-apiserver kube-controller-manager; do
		if is_ours "$state" "$n"; then
			log "$n: running (pid $(cat "$state/$n.pid"))"
		else
			log "$n: not running"
			rc=1
		fi
	done
	[ $rc -eq 0 ] && echo "$state/kubeconfig"
	return $rc
}

case ${1:-} in
build) cmd_build ;;
up) cmd_up "${2:-}" ;;
down) cmd_down "${2:-}" ;;
status) cmd_status "${2:-}" ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
