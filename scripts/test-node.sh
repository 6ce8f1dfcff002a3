#!/usr/bin/env bash
# A real, throwaway Kubernetes node on 127.0.0.1 for integration tests: the control plane of
# scripts/test-cluster.sh (etcd, kube-apiserver, kube-controller-manager), plus Debian's
# containerd and runc, and the kubelet built with the control plane (same version, same cache).
# The node is named 127.0.0.1, and a kube-scheduler (built with the control plane) places pods
# that name no node (as a receiver pod on a volume with no node affinity is). Images are
# built locally (scripts/lib/node_images.py) and imported, never pulled: pods use
# imagePullPolicy: Never. Pod networking: scripts/lib/cni_isolated.py, an interface that exists only
# inside the pod's network namespace. One node per host at a time (a host-wide lock).
#
# Usage (as root):
#   scripts/test-node.sh build              test-cluster.sh build (the kubelet and kube-scheduler too),
#                                           prometheus3.sh build (Prometheus 3, for its image),
#                                           then the image archives; LAST stdout line = images dir
#   scripts/test-node.sh up     [STATE_DIR] start everything, wait for node 127.0.0.1 Ready;
#                                           LAST stdout line = path of the env file
#   scripts/test-node.sh down   [STATE_DIR] delete every pod (the kubelet confirms), stop the
#                                           kubelet, containerd, leftover shims and container
#                                           processes, the control plane; unmount everything
#                                           below STATE_DIR deepest first, remove the cgroups,
#                                           check the sysctls, remove STATE_DIR
#   scripts/test-node.sh status [STATE_DIR] exit 0 (and print the env file path) if all runs
#
# The env file (shell-sourceable) holds test-cluster.sh's (KUBECONFIG, PROMIGRATE_KUBE_SERVER,
# PROMIGRATE_KUBE_CA, PROMIGRATE_KUBE_TOKEN) and PROMIGRATE_NODE_NAME, PROMIGRATE_NODE_STATE,
# PROMIGRATE_NODE_KUBECTL, PROMIGRATE_NODE_CONTAINERD (containerd's socket; `ctr -n k8s.io`),
# PROMIGRATE_NODE_PAUSE_IMAGE, PROMIGRATE_NODE_STANDIN_IMAGE (busybox standing in for Prometheus:
# sh, cat, tar), PROMIGRATE_NODE_SHELLLESS_IMAGE (the static pause binary only: no shell, no tar),
# PROMIGRATE_NODE_PROMETHEUS_IMAGE (a real Prometheus 3 from scripts/prometheus3.sh on that busybox,
# laid out like the official image).
#
# Environment:
#   PROMIGRATE_NODE_STATE     state dir when none is given (default ${TMPDIR:-/tmp}/promigrate-node-<uid>)
#   PROMIGRATE_NODE_IMAGES    image archives and their inputs
#                             (default ${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/node-images)
#   PROMIGRATE_NODE_TIMEOUT   seconds to wait for each step (default 120)
#   PROMIGRATE_KUBE_*         passed on to test-cluster.sh (version, cache, controllers)
#
# Outside STATE_DIR while up (all removed by `down`): the cgroups /sys/fs/cgroup/*/promigrate-node
# (the kubelet's cgroupRoot), /var/lib/kubelet/device-plugins/kubelet.sock (a path the kubelet
# hard-codes), shim sockets in /run/containerd/s (hard-coded by containerd 1.6), the host lock
# /run/lock/promigrate-node.lock (kept, empty). Nothing is added to the host network namespace,
# iptables, /etc or the host's sysctls (the kubelet runs in a mount namespace where the sysctls it
# would rewrite are files under STATE_DIR: scripts/lib/sysctl-shield.sh).
set -euo pipefail

HERE=$(cd "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
KUBE_VERSION=${PROMIGRATE_KUBE_VERSION:-v1.34.4}
KUBE_CACHE=${PROMIGRATE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/kube-$KUBE_VERSION}
KUBE_BIN=$KUBE_CACHE/bin
IMAGES=${PROMIGRATE_NODE_IMAGES:-${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/node-images}
DEFAULT_STATE=${PROMIGRATE_NODE_STATE:-${TMPDIR:-/tmp}/promigrate-node-$(id -u)}
TIMEOUT=${PROMIGRATE_NODE_TIMEOUT:-120}
HOST_LOCK=/run/lock/promigrate-node.lock
MARKER=.promigrate-test-node
NODE_NAME=127.0.0.1
CGROUP_ROOT=promigrate-node
POD_CIDR=10.244.0.0/24
CNI_BIN=/usr/lib/cni
# What the kubelet's setupKernelTunables sets at start-up (protectKernelDefaults: false).
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
# Host paths the kubelet or containerd may create although every directory they are given lies
# under STATE: `down` removes those that did not exist before `up`, once empty.
HOST_PATHS="/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/run/netns /usr/libexec/kubernetes /etc/kubernetes /var/lib/containerd /var/lib/cni /etc/cni /opt/cni"

log() { printf 'test-node: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
fail() { die "$@"; }

# shellcheck source=lib/daemons.sh
. "$HERE/lib/daemons.sh"

# Wall-clock timing: now_us, then since_s START_US -> "1.2".
now_us() { echo "${EPOCHREALTIME/./}"; }
since_s() {
	local us=$(($(now_us) - $1))
	printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}

kubectl_() { "$KUBE_BIN/kubectl" --kubeconfig "$STATE/cp/kubeconfig" --request-timeout=10s "$@"; }
ctr_() { ctr --address "$STATE/containerd/containerd.sock" -n k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------
# build

# ensure_images: the image archives in $IMAGES (rebuilt only when their inputs change); sets
# IMAGES_ENV. busybox-static is fetched once with `apt-get download` and kept there.
ensure_images() {
	mkdir -p "$IMAGES"
	exec 7>"$IMAGES.lock"
	flock 7
	local deb
	deb=$(find "$IMAGES" -maxdepth 1 -name 'busybox-static_*.deb' | sort | tail -n 1)
	if [ -z "$deb" ]; then
		log "fetching Debian's busybox-static (apt-get download; not installed)"
		if ! (cd "$IMAGES" && apt-get download -qq -o APT::Sandbox::User=root busybox-static >&2); then
			[ "$(id -u)" -eq 0 ] || die "apt-get download busybox-static failed; as root, apt-get update first"
			apt-get update -qq >&2
			(cd "$IMAGES" && apt-get download -qq -o APT::Sandbox::User=root busybox-static >&2) ||
				die "apt-get download busybox-static failed"
		fi
		deb=$(find "$IMAGES" -maxdepth 1 -name 'busybox-static_*.deb' | sort | tail -n 1)
	fi
	# pause.c comes from the k8s.io/kubernetes module the kube binaries are built from.
	local kube_src
	kube_src=$(GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	[ -f "$kube_src/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@$KUBE_VERSION ($kube_src)"
	IMAGES_ENV=$(python3 "$HERE/lib/node_images.py" build "$IMAGES" "$deb" "$kube_src" | tail -n 1)
	exec 7>&-
	[ -f "$IMAGES_ENV" ] || die "scripts/lib/node_images.py wrote no images.env"
}

# ensure_prometheus_image: the Prometheus image archive in $IMAGES (Prometheus 3 built or found
# by scripts/prometheus3.sh, cached by version there; the archive rebuilt only when its inputs
# change); sets PROMETHEUS_ENV. Runs after ensure_images (it reuses the busybox .deb).
ensure_prometheus_image() {
	local prom_bin deb
	prom_bin=$(bash "$HERE/prometheus3.sh" build | tail -n 1)
	[ -x "$prom_bin/prometheus" ] || die "scripts/prometheus3.sh build gave no prometheus in '$prom_bin'"
	exec 7>"$IMAGES.lock"
	flock 7
	deb=$(find "$IMAGES" -maxdepth 1 -name 'busybox-static_*.deb' | sort | tail -n 1)
	PROMETHEUS_ENV=$(python3 "$HERE/lib/node_images.py" prometheus "$IMAGES" "$deb" "$prom_bin" | tail -n 1)
	exec 7>&-
	[ -f "$PROMETHEUS_ENV" ] || die "scripts/lib/node_images.py wrote no prometheus.env"
}

ensure_built() {
	bash "$HERE/test-cluster.sh" build >/dev/null
	local c
	for c in kubelet kube-scheduler; do
		[ -x "$KUBE_BIN/$c" ] || die "no $c in $KUBE_BIN after test-cluster.sh build"
	done
	ensure_images
	ensure_prometheus_image
}

cmd_build() {
	command -v gcc >/dev/null 2>&1 || die "gcc not found (apt-get install gcc libc6-dev; scripts/deps.sh does)"
	ensure_built
	log "kube binaries: $KUBE_BIN; images: $IMAGES"
	echo "$IMAGES"
}

# ---------------------------------------------------------------------------------------------
# host lock: one node per host. /run/lock/promigrate-node.lock is flock'ed while up or down runs
# and holds the state dir of the node that is up (empty when none is).

lock_host() {
	exec 8>>"$HOST_LOCK"
	if ! flock -n 8; then
		log "waiting for another test-node.sh up/down ($HOST_LOCK)"
		flock -w "$TIMEOUT" 8 || die "$HOST_LOCK still locked after ${TIMEOUT}s"
	fi
}
lock_owner() { head -n 1 "$HOST_LOCK" 2>/dev/null || true; }
set_owner() { printf '%s\n' "$1" >"$HOST_LOCK"; }

# running S: the kubelet, containerd or the control plane of the node in state dir S runs
# (shims and containers left by a node whose kubelet and containerd died are only leftovers).
running() {
	local s=$1 n
	for n in kube-scheduler kubelet containerd; do is_ours "$s" "$n" && return 0; done
	for n in etcd kube-apiserver kube-controller-manager; do is_ours "$s/cp" "$n" && return 0; done
	return 1
}

# ---------------------------------------------------------------------------------------------
# up

preflight() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (containerd, runc, the kubelet's mounts and cgroups)"
	local c
	for c in containerd containerd-shim-runc-v2 runc ctr nsenter unshare mount umount findmnt ip flock python3 curl go; do
		command -v "$c" >/dev/null 2>&1 || die "$c not found (scripts/deps.sh installs what the test node needs)"
	done
	[ -x "$CNI_BIN/host-local" ] && [ -x "$CNI_BIN/loopback" ] ||
		die "$CNI_BIN/host-local or loopback missing (apt-get install containernetworking-plugins)"
	[ -n "$(cgroup_dirs)" ] || die "no cgroup v1 hierarchy mounted: the test node was only tried with cgroup v1"
}

cgroup_dirs() { awk '$3 == "cgroup" { print $2 }' /proc/mounts; }
# Every hierarchy, v2 too: runc also makes the cgroups in the unified one of a hybrid setup.
all_cgroup_dirs() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts; }

make_cgroups() {
	local h
	for h in $(cgroup_dirs); do
		mkdir -p "$h/$CGROUP_ROOT"
		if [ -f "$h/cpuset.cpus" ]; then
			cat "$h/cpuset.cpus" >"$h/$CGROUP_ROOT/cpuset.cpus"
			cat "$h/cpuset.mems" >"$h/$CGROUP_ROOT/cpuset.mems"
		fi
	done
}

write_cni() {
	mkdir -p "$STATE/cni/bin" "$STATE/cni/net.d" "$STATE/cni/ipam"
	ln -s "$CNI_BIN/loopback" "$STATE/cni/bin/loopback"
	ln -s "$CNI_BIN/host-local" "$STATE/cni/bin/host-local"
	install -m 0755 "$HERE/lib/cni_isolated.py" "$STATE/cni/bin/promigrate-isolated"
	cat >"$STATE/cni/net.d/10-promigrate-isolated.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "promigrate-isolated",
		  "plugins": [
		    {
		      "type": "promigrate-isolated",
		      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "dataDir": "$STATE/cni/ipam"}
		    }
		  ]
		}
	EOF
}

write_containerd_config() {
	local d=$STATE/containerd restrict=false cap
	# Without CAP_SYS_RESOURCE (capability 24; this VM's root lacks it) runc cannot set the
	# oom_score_adj the kubelet asks for (-998 for the sandbox: lower than ours) and every sandbox
	# fails with "can't get final child's PID from pipe: EOF".
	cap=$(awk '/^CapEff/ { print $2 }' /proc/self/status)
	(((16#$cap >> 24) & 1)) || restrict=true
	mkdir -p "$d/root" "$d/state" "$d/runc"
	cat >"$d/config.toml" <<-EOF
		version = 2
		root = "$d/root"
		state = "$d/state"
		disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

		[grpc]
		  address = "$d/containerd.sock"
		[ttrpc]
		  address = "$d/containerd.sock.ttrpc"
		[debug]
		  address = "$d/debug.sock"
		[metrics]
		  address = ""

		[plugins]
		  [plugins."io.containerd.internal.v1.opt"]
		    path = "$d/opt"
		  [plugins."io.containerd.grpc.v1.cri"]
		    sandbox_image = "$PAUSE_IMAGE"
		    stream_server_address = "127.0.0.1"
		    stream_server_port = "0"
		    enable_selinux = false
		    netns_mounts_under_state_dir = true
		    restrict_oom_score_adj = $restrict
		    [plugins."io.containerd.grpc.v1.cri".containerd]
		      snapshotter = "overlayfs"
		      default_runtime_name = "runc"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		        runtime_type = "io.containerd.runc.v2"
		        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		          SystemdCgroup = false
		          Root = "$d/runc"
		    [plugins."io.containerd.grpc.v1.cri".cni]
		      bin_dir = "$STATE/cni/bin"
		      conf_dir = "$STATE/cni/net.d"
		      max_conf_num = 1
	EOF
}

write_kubelet_config() {
	local d=$STATE/kubelet
	mkdir -p "$d/root" "$d/pod-logs" "$d/volume-plugins" "$d/pki"
	cat >"$d/config.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		# Loopback only: the apiserver reaches it at 127.0.0.1 (exec, logs, port-forward) and
		# skips TLS verification (test-cluster.sh sets no --kubelet-certificate-authority).
		address: 127.0.0.1
		port: $1
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		healthzPort: $2
		authentication:
		  anonymous: {enabled: true}
		  webhook: {enabled: false}
		authorization: {mode: AlwaysAllow}
		containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
		imageServiceEndpoint: unix://$STATE/containerd/containerd.sock
		# cgroup v1 with the cgroupfs driver, everything below /$CGROUP_ROOT (removed by down).
		cgroupDriver: cgroupfs
		cgroupRoot: /$CGROUP_ROOT
		failCgroupV1: false
		failSwapOn: false
		# No KUBE-FIREWALL/KUBE-IPTABLES-HINT chains in the host's iptables.
		makeIPTablesUtilChains: false
		protectKernelDefaults: false
		podLogsDir: $d/pod-logs
		volumePluginDir: $d/volume-plugins
		podCIDR: $POD_CIDR
		maxPods: 50
		serializeImagePulls: false
		# A test machine's disk may be full of fixtures: evict nothing.
		evictionHard: {memory.available: "50Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		fileCheckFrequency: 5s
		syncFrequency: 10s
		nodeStatusReportFrequency: 10s
		shutdownGracePeriod: 0s
		shutdownGracePeriodCriticalPods: 0s
	EOF
}

# wait_until WHAT NAME CMD...: until CMD succeeds, while our NAME process runs, for TIMEOUT s.
wait_until() {
	local what=$1 name=$2 deadline=$((SECONDS + TIMEOUT))
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ! is_ours "$STATE" "$name"; then
			tail -n 40 "$STATE/$name.log" >&2 || true
			fail "$name exited while waiting for $what (log: $STATE/$name.log)"
		fi
		if [ $SECONDS -ge $deadline ]; then
			tail -n 40 "$STATE/$name.log" >&2 || true
			fail "timed out after ${TIMEOUT}s waiting for $what (log: $STATE/$name.log)"
		fi
		sleep 0.2
	done
}

node_ready() {
	[ "$(kubectl_ get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

UP_OK=0
up_exit() {
	[ "$UP_OK" = 1 ] && return 0
	log "up failed: tearing down; the logs stay in $STATE (removed by the next up or down)"
	# test-cluster.sh down removes its state dir: keep its logs beside ours
	local f
	for f in "$STATE"/cp/*.log; do [ ! -f "$f" ] || cp "$f" "$STATE/cp-${f##*/}"; done
	teardown
	set_owner ""
	return 0
}

cmd_up() {
	STATE=$(resolve_state "${1:-}")
	local t0 t owner
	t0=$(now_us)
	preflight
	ensure_built
	# shellcheck disable=SC1090
	. "$IMAGES_ENV"
	# shellcheck disable=SC1090
	. "$PROMETHEUS_ENV"
	lock_host
	owner=$(lock_owner)
	if [ -n "$owner" ] && running "$owner"; then
		[ "$owner" = "$STATE" ] && die "a test node is already up in $STATE; stop it first: $0 down $STATE"
		die "a test node is up in $owner, and two cannot share a host (the cgroup root, the kubelet's hard-coded paths); stop it first: $0 down $owner"
	fi
	if [ -n "$owner" ] && [ "$owner" != "$STATE" ] && [ -f "$owner/$MARKER" ]; then
		log "cleaning up after a test node that died in $owner"
		(
			STATE=$owner
			teardown
			remove_state
		) || die "could not clean up $owner"
	fi
	if [ -d "$STATE" ]; then
		[ -f "$STATE/$MARKER" ] || [ -z "$(ls -A "$STATE")" ] ||
			die "$STATE exists and is not a test-node state dir; refusing to use it"
		if [ -f "$STATE/$MARKER" ]; then
			running "$STATE" && die "something of the node in $STATE still runs: $0 down $STATE"
			teardown
		fi
		remove_state || die "cannot reuse $STATE"
	fi
	local h
	for h in $(all_cgroup_dirs); do
		[ -d "$h/$CGROUP_ROOT" ] || continue
		find "$h/$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[ ! -d "$h/$CGROUP_ROOT" ] || die "$h/$CGROUP_ROOT exists and is in use (another kubelet?); not starting"
	done
	mkdir -p "$STATE"
	chmod 700 "$STATE"
	touch "$STATE/$MARKER"
	set_owner "$STATE"
	trap up_exit EXIT
	trap 'fail "interrupted"' INT TERM HUP
	local p s
	for p in $HOST_PATHS; do [ ! -e "$p" ] || echo "$p"; done >"$STATE/host-paths.before"
	for s in $SYSCTLS; do echo "$s=$(sysctl -n "$s")"; done >"$STATE/sysctls.before"

	# 1. the control plane (controllers: test-cluster.sh's, or PROMIGRATE_KUBE_CONTROLLERS)
	t=$(now_us)
	PROMIGRATE_KUBE_TIMEOUT=$TIMEOUT bash "$HERE/test-cluster.sh" up "$STATE/cp" >/dev/null ||
		fail "the control plane did not start (logs: $STATE/cp)"
	log "control plane up in $(since_s "$t") s"

	# 2. cgroups, CNI, containerd, images
	t=$(now_us)
	make_cgroups
	write_cni
	write_containerd_config
	start containerd "$(command -v containerd)" --config "$STATE/containerd/config.toml" --log-level info
	wait_until "containerd's socket" containerd ctr --address "$STATE/containerd/containerd.sock" version
	log "containerd ready in $(since_s "$t") s"
	t=$(now_us)
	local a
	for a in pause prometheus-standin shellless prometheus; do
		ctr_ images import "$IMAGES/$a.oci.tar" >/dev/null || fail "ctr images import $IMAGES/$a.oci.tar failed"
	done
	# The kubelet's image garbage collection leaves pinned images alone.
	ctr_ images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
	log "images imported in $(since_s "$t") s"

	# 3. the kubelet, in a mount namespace of its own (the sysctl shield). Its root dir is a
	# shared mount first, so the volume mounts it makes there reach containerd and the host.
	t=$(now_us)
	local ports
	mapfile -t ports < <(free_ports 2)
	[ "${#ports[@]}" -eq 2 ] || fail "could not find free ports"
	write_kubelet_config "${ports[0]}" "${ports[1]}"
	mount --bind "$STATE/kubelet/root" "$STATE/kubelet/root"
	mount --make-shared "$STATE/kubelet/root"
	mkdir -p "$STATE/kubelet/sysctl"
	for s in $SYSCTLS; do sysctl -n "$s" >"$STATE/kubelet/sysctl/$s"; done
	LAUNCHER=(unshare --mount --propagation unchanged sh "$HERE/lib/sysctl-shield.sh" "$STATE/kubelet/sysctl")
	start kubelet "$KUBE_BIN/kubelet" \
		--config="$STATE/kubelet/config.yaml" \
		--kubeconfig="$STATE/cp/kubeconfig" \
		--root-dir="$STATE/kubelet/root" \
		--cert-dir="$STATE/kubelet/pki" \
		--hostname-override="$NODE_NAME" \
		--v=2
	LAUNCHER=()
	wait_until "the kubelet's /healthz" kubelet curl -fsS --max-time 2 "http://127.0.0.1:${ports[1]}/healthz"
	wait_until "node $NODE_NAME Ready" kubelet node_ready
	log "node $NODE_NAME Ready $(since_s "$t") s after the kubelet started"

	# 4. the scheduler, for pods that name no node. It serves /healthz (always allowed) on a
	# loopback port with a self-signed certificate. The kubelet registered the node with the
	# node.kubernetes.io/not-ready:NoSchedule taint, which the node lifecycle controller
	# removes once the node is Ready; that controller does not run here (it would also evict
	# the tests' pods when a loaded machine delays a heartbeat), so the taint goes here.
	t=$(now_us)
	local taints
	kubectl_ taint nodes "$NODE_NAME" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
	taints=$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.spec.taints}') ||
		fail "cannot read the taints of node $NODE_NAME"
	[[ $taints != *not-ready* ]] || fail "cannot remove the not-ready taint of node $NODE_NAME: $taints"
	mapfile -t ports < <(free_ports 1)
	[ "${#ports[@]}" -eq 1 ] || fail "could not find a free port"
	start kube-scheduler "$KUBE_BIN/kube-scheduler" \
		--kubeconfig="$STATE/cp/kubeconfig" \
		--authentication-kubeconfig="$STATE/cp/kubeconfig" \
		--authorization-kubeconfig="$STATE/cp/kubeconfig" \
		--leader-elect=false \
		--bind-address=127.0.0.1 --secure-port="${ports[0]}" \
		--cert-dir="$STATE/scheduler-certs"
	wait_until "the kube-scheduler's /healthz" kube-scheduler curl -fsSk --max-time 2 "https://127.0.0.1:${ports[0]}/healthz"
	log "kube-scheduler ready in $(since_s "$t") s"

	{
		grep -v '^PROMIGRATE_KUBE_STATE=' "$STATE/cp/env"
		echo "PROMIGRATE_NODE_NAME=$NODE_NAME"
		echo "PROMIGRATE_NODE_STATE=$STATE"
		echo "PROMIGRATE_NODE_KUBECTL=$KUBE_BIN/kubectl"
		echo "PROMIGRATE_NODE_CONTAINERD=$STATE/containerd/containerd.sock"
		echo "PROMIGRATE_NODE_PAUSE_IMAGE=$PAUSE_IMAGE"
		echo "PROMIGRATE_NODE_STANDIN_IMAGE=$STANDIN_IMAGE"
		echo "PROMIGRATE_NODE_SHELLLESS_IMAGE=$SHELLLESS_IMAGE"
		echo "PROMIGRATE_NODE_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE"
	} >"$STATE/env"
	chmod 600 "$STATE/env"
	UP_OK=1
	trap - INT TERM HUP
	log "node up in $(since_s "$t0") s (kubelet $KUBE_VERSION, $(containerd --version | awk '{print $3}')); stop with: $0 down $STATE"
	echo "$STATE/env"
}

# ---------------------------------------------------------------------------------------------
# down

# our_shims S: PIDs of the containerd shims started for the containerd of state dir S (they
# outlive containerd by design).
our_shims() {
	local p args sock=$1/containerd/containerd.sock
	for p in /proc/[0-9]*; do
		args=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
		case $args in *containerd-shim*" -address $sock "*) echo "${p#/proc/}" ;; esac
	done
}

# cgroup_procs: the processes still in our cgroups (containers whose shim or containerd died).
cgroup_procs() {
	local h
	for h in $(all_cgroup_dirs); do
		[ -d "$h/$CGROUP_ROOT" ] || continue
		find "$h/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -u
}

mounts_below() { findmnt -rn -o TARGET | awk -v s="$1/" 'index($0, s) == 1' | sort -r; }

# remove_state: rm -rf STATE, but never while anything below it is mounted: a bind mount of a
# PV's directory has the same st_dev, so `rm --one-file-system` would go into it.
remove_state() {
	local m
	m=$(mounts_below "$STATE")
	if [ -n "$m" ]; then
		log "ERROR: still mounted below $STATE, not removing it: $(echo "$m" | tr '\n' ' ')"
		return 1
	fi
	rm -rf "$STATE"
}

# teardown: stops everything of the node in STATE and undoes what it did to the host; safe to
# run again, and after a kill -9 of any part. Leaves STATE's files (logs) in place.
teardown() (
	set +e
	local t i pid m h s v left
	# 1. no controller may recreate a pod while they are deleted, nor the scheduler place one
	stop_one "$STATE/cp" kube-controller-manager
	stop_one "$STATE" kube-scheduler
	# 2. every pod deleted, and confirmed by the kubelet: it stops the containers, tears down
	# the sandboxes and network namespaces and unmounts the volumes first
	if is_ours "$STATE" kubelet && is_ours "$STATE" containerd && is_ours "$STATE/cp" kube-apiserver; then
		t=$(now_us)
		kubectl_ delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1
		for ((i = 0; i < 600; i++)); do
			left=$(kubectl_ get pods --all-namespaces -o name 2>/dev/null) || left=unknown
			[ -z "$left" ] && break
			sleep 0.1
		done
		if [ -z "$left" ]; then
			log "pods deleted and confirmed by the kubelet in $(since_s "$t") s"
		else
			log "WARNING: pods still there after 60 s: $(echo "$left" | tr '\n' ' ')"
		fi
	fi
	stop_one "$STATE" kubelet 20
	# 3. what the kubelet left to containerd
	if is_ours "$STATE" containerd; then
		for i in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$i" >/dev/null 2>&1; done
		for i in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$i" >/dev/null 2>&1; done
	fi
	stop_one "$STATE" containerd 20
	for pid in $(our_shims "$STATE"); do
		log "killing leftover shim $pid"
		kill -KILL "$pid" 2>/dev/null
	done
	for pid in $(cgroup_procs); do
		log "killing leftover container process $pid ($({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-60))"
		kill -KILL "$pid" 2>/dev/null
	done
	for ((i = 0; i < 50; i++)); do
		[ -z "$(our_shims "$STATE")$(cgroup_procs)" ] && break
		sleep 0.1
	done
	# A shim killed with SIGKILL leaves its socket in /run/containerd/s (each task's bundle
	# names it in its `address` file), and a sandbox never torn down its CNI results in
	# /var/lib/cni/results (libcni's hard-coded cache: <network>-<sandbox id>-<interface>) and
	# the kubelet its log links in /var/log/containers (hard-coded too).
	for s in "$STATE"/containerd/state/io.containerd.runtime.v2.task/*/*/address; do
		[ -f "$s" ] || continue
		v=$(cat "$s")
		v=${v#unix://}
		case $v in /run/containerd/s/*) rm -f "$v" ;; esac
	done
	for s in /var/lib/cni/results/promigrate-isolated-*-eth0; do
		[ -f "$s" ] || continue
		v=${s#/var/lib/cni/results/promigrate-isolated-}
		rm -f "$s" "/var/lib/cni/results/cni-loopback-${v%-eth0}-lo"
	done
	find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null
	# 4. mounts below STATE, deepest first: volume and subPath binds, netns, shm, rootfs
	# overlays, the kubelet's root dir
	for ((i = 0; i < 3; i++)); do
		m=$(mounts_below "$STATE")
		[ -z "$m" ] && break
		while IFS= read -r s; do umount "$s" 2>/dev/null; done <<<"$m"
	done
	m=$(mounts_below "$STATE")
	[ -z "$m" ] || log "WARNING: could not unmount: $(echo "$m" | tr '\n' ' ')"
	# 5. the cgroups below our cgroup root
	for h in $(all_cgroup_dirs); do
		[ -d "$h/$CGROUP_ROOT" ] || continue
		for ((i = 0; i < 20; i++)); do
			find "$h/$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null
			[ -d "$h/$CGROUP_ROOT" ] || break
			sleep 0.1
		done
		[ ! -d "$h/$CGROUP_ROOT" ] || log "WARNING: could not remove cgroup $h/$CGROUP_ROOT"
	done
	# 6. the host's sysctls: the shield kept the kubelet off them; say so if one changed anyway
	if [ -f "$STATE/sysctls.before" ]; then
		m=0
		while IFS== read -r s v; do
			[ "$(sysctl -n "$s")" = "$v" ] && continue
			log "WARNING: sysctl $s changed to $(sysctl -n "$s") while the node ran; restoring $v"
			sysctl -qw "$s=$v"
			m=1
		done <"$STATE/sysctls.before"
		[ $m = 1 ] || log "host sysctls unchanged ($SYSCTLS)"
	fi
	# 7. the control plane
	[ ! -d "$STATE/cp" ] || bash "$HERE/test-cluster.sh" down "$STATE/cp"
	# 8. host paths made during this run, once emptied of what the kubelet left
	if [ -f "$STATE/host-paths.before" ]; then
		find /var/lib/kubelet/device-plugins -maxdepth 1 \( -name kubelet.sock -o -name kubelet_internal_checkpoint \) \
			-newer "$STATE/$MARKER" -delete 2>/dev/null
		for s in $HOST_PATHS; do
			[ -e "$s" ] || continue
			grep -qxF "$s" "$STATE/host-paths.before" && continue
			find "$s" -depth -type d -empty -delete 2>/dev/null
			[ ! -e "$s" ] || log "WARNING: $s was made while the node ran and is not empty: $(find "$s" | head -n 5 | tr '\n' ' ')"
		done
	fi
	exit 0
)

cmd_down() {
	local t
	t=$(now_us)
	STATE=$(resolve_state "${1:-}")
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	lock_host
	if [ ! -d "$STATE" ]; then
		[ "$(lock_owner)" != "$STATE" ] || set_owner ""
		log "nothing to stop: $STATE does not exist"
		return 0
	fi
	[ -f "$STATE/$MARKER" ] || die "$STATE is not a test-node state dir; refusing to touch it"
	teardown
	remove_state || die "left $STATE in place"
	[ "$(lock_owner)" != "$STATE" ] || set_owner ""
	log "down in $(since_s "$t") s; removed $STATE"
}

cmd_status() {
	local rc=0 n
	STATE=$(resolve_state "${1:-}")
	for n in containerd kubelet kube-scheduler; do
		if is_ours "$STATE" "$n"; then log "$n: running (pid $(cat "$STATE/$n.pid"))"; else
			log "$n: not running"
			rc=1
		fi
	done
	bash "$HERE/test-cluster.sh" status "$STATE/cp" >/dev/null || rc=1
	[ $rc -eq 0 ] || return 1
	node_ready || {
		log "node $NODE_NAME: not Ready"
		return 1
	}
	log "node $NODE_NAME: Ready"
	echo "$STATE/env"
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
