# shellcheck shell=bash
# Shared by scripts/test-cluster.sh and scripts/test-node.sh (sourced, not run): the daemons they
# start in the background and stop again. A daemon NAME has STATE/NAME.pid, STATE/NAME.exe (the
# binary) and STATE/NAME.log; only a process whose command line still shows that binary with a
# path under STATE in its arguments is ever signalled (PIDs get reused).
# The caller defines log MSG, die MSG and fail MSG (abort; used by start), sets STATE for start
# and DEFAULT_STATE for resolve_state.

LAUNCHER=()

# free_ports N: N distinct free TCP ports on 127.0.0.1, one a line.
free_ports() {
	if command -v python3 >/dev/null 2>&1; then
		python3 - "$1" <<-'EOF'
			import socket, sys
			socks = []
			for _ in range(int(sys.argv[1])):
			    s = socket.socket()
			    s.bind(("127.0.0.1", 0))
			    socks.append(s)
			for s in socks:
			    print(s.getsockname()[1])
			for s in socks:
			    s.close()
		EOF
		return 0
	fi
	local p n=0 seen=" "
	for _ in $(seq 500); do
		p=$((20000 + RANDOM % 30000))
		case $seen in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
			! grep -qi ":$(printf '%04X' "$p") " /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
			echo "$p"
			seen="$seen$p "
			n=$((n + 1))
			[ $n -lt "$1" ] || return 0
		fi
	done
	die "no free port found"
}

# is_ours STATE NAME: the PID recorded for NAME (STATE/NAME.pid) is alive and still runs the binary we started
# (guards against PID reuse: never signal anything else).
is_ours() {
	local state=$1 name=$2 pid exe stat args a
	[ -f "$state/$name.pid" ] || return 1
	pid=$(cat "$state/$name.pid")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	exe=$(cat "$state/$name.exe" 2>/dev/null || true)
	[ -n "$exe" ] || return 1
	{ mapfile -d '' args <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
	# argv[0] is the path we started and a path under the state dir is in its arguments.
	[ "${#args[@]}" -gt 1 ] && [ "${args[0]}" = "$exe" ] || return 1
	for a in "${args[@]:1}"; do
		case $a in
		*"$state/"*)
			# a zombie (exited, not yet reaped) is not running
			stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
			stat=${stat##*) }
			# (explicit statuses: a bare `return` in a trap handler returns the pre-trap status)
			[ "${stat%% *}" != Z ] && return 0
			return 1
			;;
		esac
	done
	return 1
}

# wait_gone STATE NAME TRIES: waits up to TRIES × 0.1 s for our NAME process to be gone.
wait_gone() {
	for _ in $(seq "$3"); do
		is_ours "$1" "$2" || return 0
		sleep 0.1
	done
}

# stop_one STATE NAME [GRACE]: SIGTERM to our NAME process, SIGKILL after GRACE s (default 10).
stop_one() {
	local state=$1 name=$2 grace=${3:-10} pid
	if ! is_ours "$state" "$name"; then
		rm -f "$state/$name.pid"
		return 0
	fi
	pid=$(cat "$state/$name.pid")
	log "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	wait_gone "$state" "$name" $((grace * 10))
	if is_ours "$state" "$name"; then
		log "$name (pid $pid) did not stop in $grace s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$state" "$name" 50
	fi
	rm -f "$state/$name.pid"
}

# start NAME EXE ARGS...: run in the background, output to STATE/NAME.log, PID to STATE/NAME.pid.
# With LAUNCHER (an array) set, runs "${LAUNCHER[@]}" EXE ARGS...: the launcher must exec EXE in
# its own process (unshare without --fork, a shell's exec), so the PID becomes EXE's.
start() {
	local name=$1 exe=$2
	shift 2
	echo "$exe" >"$STATE/$name.exe"
	local pid i
	# fds 7-9 are the callers' lock files (builds, the test node's host lock): a daemon that
	# inherited one would hold that lock as long as it runs.
	"${LAUNCHER[@]}" "$exe" "$@" </dev/null >"$STATE/$name.log" 2>&1 7>&- 8>&- 9>&- &
	pid=$!
	echo "$pid" >"$STATE/$name.pid"
	# Until it has exec'd the binary the child is a copy of this shell (or the launcher), with
	# another command line, and is_ours does not know it: wait_for took that for "exited" (an
	# empty log) on a loaded machine. Wait for the exec (or the end) first.
	for ((i = 0; i < 200; i++)); do
		is_ours "$STATE" "$name" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null && ! is_ours "$STATE" "$name"; then
		fail "$name (pid $pid) did not start $exe within 10 s (its command line: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline"))"
	fi
	log "started $name (pid $pid, log $STATE/$name.log)"
}

# resolve_state [DIR]: DIR (default $DEFAULT_STATE) as an absolute path without a trailing slash.
resolve_state() {
	local s=${1:-$DEFAULT_STATE}
	case $s in
	/*) ;;
	*) s=$PWD/$s ;;
	esac
	printf '%s\n' "${s%/}"
}
