#!/usr/bin/env bash
# bench-ssh.sh - copy throughput from an SSH source: promigrate (SFTP, one connection per
# worker) against `rsync -a -e ssh` and `scp -r`, on the same real blocks, through the same
# Debian OpenSSH sshd on 127.0.0.1, cache dropped before every run, rounds interleaved.
# Every run writes a fresh target and is timed until its data is durable (sync).
# Measurements, not assertions.
set -euo pipefail
cd "$(dirname "$0")/.."

gib=1
rounds=3
out=target/bench/results-ssh.md
while [ $# -gt 0 ]; do
	case "$1" in
	--gib) gib=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	*) echo "usage: $0 [--gib N] [--rounds N] [--out FILE]" >&2; exit 2 ;;
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
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
sshd_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$work/host_key.pub")" >"$work/known_hosts"
ssh_opts="-p $port -i $work/client_key -o UserKnownHostsFile=$work/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"

mkdir -p "$work/pv"
cat >"$work/plan.yaml" <<EOF
apiVersion: promigrate/v1
kind: Migration
metadata: { name: bench-ssh }
source:
  path: $src
  ssh: { host: 127.0.0.1, port: $port, user: root, identityFile: $work/client_key, knownHostsFile: $work/known_hosts }
target:
  path: $work/pv
  securityContext: { runAsUser: 1000, fsGroup: 2000 }
transfer: { parallelism: ${PROMIGRATE_PARALLELISM:-4} }
EOF

declare -A times
run() { # name command...
	local name=$1
	shift
	rm -rf "$work/pv"/* "$work/dst"
	mkdir -p "$work/dst"
	sync
	echo 3 >/proc/sys/vm/drop_caches
	local t0 t1
	t0=$(date +%s.%N)
	"$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
	sync
	t1=$(date +%s.%N)
	times[$name]+="$(echo "$t1 - $t0" | bc) "
	echo "bench-ssh: $name $(echo "$t1 - $t0" | bc) s" >&2
}
for r in $(seq "$rounds"); do
	run promigrate "$PWD/target/release/promigrate" apply -f "$work/plan.yaml" --yes --phase presync --state-dir "$work/records"
	# shellcheck disable=SC2086
	run rsync rsync -a -e "ssh $ssh_opts" "root@127.0.0.1:$src/" "$work/dst/"
	# shellcheck disable=SC2086
	run scp scp -q -r -P "$port" -i "$work/client_key" -o "UserKnownHostsFile=$work/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes "root@127.0.0.1:$src/." "$work/dst/"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mib=$(echo "$have / 1048576" | bc)
mkdir -p "$(dirname "$out")"
{
	echo "# SSH source throughput ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD))"
	echo
	echo "$mib MiB of real blocks in $files files, sshd on 127.0.0.1 (OpenSSH $(ssh -V 2>&1 | cut -d, -f1)), $rounds interleaved rounds, cold cache, timed until durable."
	echo
	echo "| tool | runs (s) | median (s) | MiB/s (median) |"
	echo "|---|---|---|---|"
	for t in promigrate rsync scp; do
		m=$(echo "${times[$t]}" | median)
		echo "| $t | ${times[$t]} | $m | $(echo "scale=0; $mib / $m" | bc) |"
	done
} | tee "$out"
