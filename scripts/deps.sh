#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need on a Debian machine, only where
# it is missing: Debian's prometheus (prometheus + promtool: real TSDBs and a real server),
# rsync and GNU time (benchmarks), util-linux (setpriv, mount), etcd-server and openssl (the
# test control plane of scripts/test-cluster.sh), apache2-utils (htpasswd: the bcrypt hash of
# the HTTPS Pushgateway's basic-auth user in tests/observability.rs), and for the test node of
# scripts/test-node.sh: containerd, runc, containernetworking-plugins (host-local and loopback for
# its CNI plugin), iproute2 (ip), gcc and libc6-dev (the static pause binary of its images).
# The Rust toolchain is expected (rustup); crates are fetched by cargo.
set -euo pipefail

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
[ -x /usr/bin/time ] || need+=(time)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v bc >/dev/null 2>&1 || need+=(bc)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# libc.a, for `gcc -static`
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)
# The ssh2 crate builds libssh2 against the system OpenSSL.
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 || {
		echo "deps.sh: missing ${need[*]}: install them as root (apt-get install ${need[*]})" >&2
		exit 1
	}
	sudo="sudo"
fi
echo "deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package starts a prometheus service where systemd runs; the tests start their own.
