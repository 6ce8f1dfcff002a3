#!/bin/sh
# sysctl-shield.sh DIR EXE ARGS...: scripts/test-node.sh runs the kubelet through this, inside
# `unshare --mount --propagation unchanged` (a mount namespace of its own). Every file DIR/NAME
# (NAME a sysctl such as vm.overcommit_memory, holding its current value) is bind-mounted over
# /proc/sys/<NAME with dots as slashes>, then EXE replaces this shell (same PID). At start-up the
# kubelet sets vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops and
# kernel.keys.root_max{keys,bytes}; here it writes those files instead of the host's sysctls.
set -eu
dir=$1
shift
for f in "$dir"/*; do
	name=${f##*/}
	mount --bind "$f" "/proc/sys/$(printf '%s' "$name" | tr . /)"
done
exec "$@"
