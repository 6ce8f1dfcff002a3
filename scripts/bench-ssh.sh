#!/usr/bin/env bash
# bench-ssh.sh - copy throughput from an SSH source: promigrate (`read: tar`, its default: a
# GNU tar stream per worker; and `read: sftp`) against `rsync -a -e ssh` and `scp -r`, on
# the same real blocks, through the same Debian OpenSSH sshd on 127.0.0.1, cache dropped
# before every run, rounds interleaved. Every run writes a fresh target and is timed until
# its data is durable (sync); the CPU time of the whole machine (both ends, both cores) is
# recorded beside it. Measurements, not assertions.
#
# Twice: with the login's own shell startup files (on the machine this was written on,
# root's ~/.bashrc runs `pyenv init`: about 0.2 CPU-s for every SSH session and command,
# since bash reads ~/.bashrc for commands run by sshd), and with Debian's default ~/.bashrc
# (it returns at once when not interactive), bind-mounted over the login's in a private
# mount namespace of the bench's own sshd only.
set -euo pipefail
cd "$(dirname "$0")/.."

gib=1
rounds=5
out=target/bench/results-ssh.md
startups="own default"
while [ $# -gt 0 ]; do
	case "$1" in
	--gib) gib=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--shell-startup) startups=$2; shift 2 ;;
	*) echo "usage: $0 [--gib N] [--rounds N] [--out FILE] [--shell-startup own|default|'own default']" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench-ssh.sh: run as root (drops the page cache, starts sshd)" >&2; exit 1; }

cargo build --release --locked >&2
bash scripts/gen-tsdb.sh target/fixtures/tsdb --replicate-to target/fixtures/bench-blocks-4gib --gib 4 >&2
work=$(mktemp -d -p "$PWD/target")
sshd_pid=""
cleanup() {
	[ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# Source: hard links of the first N GiB of blocks.
src="$work/source"
mkdir -p "$src"
. scripts/bench-blocks.sh
have=$(link_blocks "$src" "$gib")
files=$(find "$src" -type f | wc -l)

# A private sshd on a free loopback port.
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile $work/sshd.pid
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel ERROR
EOF
start_sshd() { # own|default
	[ -n "$sshd_pid" ] && { kill "$sshd_pid"; wait "$sshd_pid" 2>/dev/null || true; }
	if [ "$1" = default ] && [ -f "$HOME/.bashrc" ]; then
		unshare -m --propagation private sh -c \
			"mount --bind /etc/skel/.bashrc '$HOME/.bashrc' && exec /usr/sbin/sshd -D -e -f '$work/sshd_config'" \
			2>"$work/sshd.log" &
	else
		/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
	fi
	sshd_pid=$!
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$work/host_key.pub")" >"$work/known_hosts"
ssh_opts="-p $port -i $work/client_key -o UserKnownHostsFile=$work/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"

mkdir -p "$work/pv"
for read in tar sftp; do
cat >"$work/plan-$read.yaml" <<EOF
apiVersion: promigrate/v1
kind: Migration
metadata: { name: bench-ssh }
source:
  path: $src
  ssh: { host: 127.0.0.1, port: $port, user: root, identityFile: $work/client_key, knownHostsFile: $work/known_hosts, read: $read }
target:
  path: $work/pv
  securityContext: { runAsUser: 1000, fsGroup: 2000 }
transfer: { parallelism: ${PROMIGRATE_PARALLELISM:-4} }
EOF
done

declare -A times cpus
run() { # key command...
	local key=$1
	shift
	rm -rf "$work/pv"/* "$work/dst"
	mkdir -p "$work/dst"
	sync
	echo 3 >/proc/sys/vm/drop_caches
	local t0 t1 u0 n0 s0 q0 u1 n1 s1 q1 hz
	read -r _ u0 n0 s0 _ _ _ q0 _ </proc/stat
	t0=$(date +%s.%N)
	"$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
	sync
	t1=$(date +%s.%N)
	read -r _ u1 n1 s1 _ _ _ q1 _ </proc/stat
	hz=$(getconf CLK_TCK)
	times[$key]+="$(echo "$t1 - $t0" | bc) "
	cpus[$key]+="$(echo "scale=2; ($u1 - $u0 + $n1 - $n0 + $s1 - $s0 + $q1 - $q0) / $hz" | bc) "
	echo "bench-ssh: $key $(echo "$t1 - $t0" | bc) s" >&2
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mib=$(echo "$have / 1048576" | bc)
ROOT=$PWD
. scripts/lib/target.sh
pm=$(release_bin)
ssh_cmd="ssh -p $port -i $work/client_key -o UserKnownHostsFile=$work/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
tools="promigrate-tar promigrate-sftp rsync scp"
for st in $startups; do
	start_sshd "$st"
	for _ in $(seq "$rounds"); do
		run "$st promigrate-tar" "$pm" apply -f "$work/plan-tar.yaml" --yes --phase presync --state-dir "$work/records"
		run "$st promigrate-sftp" "$pm" apply -f "$work/plan-sftp.yaml" --yes --phase presync --state-dir "$work/records"
		run "$st rsync" rsync -a -e "$ssh_cmd" "root@127.0.0.1:$src/" "$work/dst/"
		run "$st scp" scp -q -r -P "$port" -i "$work/client_key" -o "UserKnownHostsFile=$work/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes "root@127.0.0.1:$src/." "$work/dst/"
	done
done

mkdir -p "$(dirname "$out")"
{
	echo "# SSH source throughput ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD))"
	echo
	echo "$mib MiB of real blocks in $files files, sshd on 127.0.0.1 (OpenSSH $(ssh -V 2>&1 | cut -d, -f1)), $(nproc) cores, $rounds interleaved rounds, cold cache, timed until durable. CPU: user+system time of the whole machine (client and server) per run."
	for st in $startups; do
		echo
		echo "## shell startup: $st"
		echo
		echo "| tool | runs (s) | median (s) | MiB/s (median) | CPU-s (median) |"
		echo "|---|---|---|---|---|"
		for t in $tools; do
			k="$st $t"
			m=$(echo "${times[$k]}" | median)
			echo "| $t | ${times[$k]} | $m | $(echo "scale=0; $mib / $m" | bc) | $(echo "${cpus[$k]}" | median) |"
		done
	done
} | tee "$out"
