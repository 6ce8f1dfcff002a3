#!/usr/bin/env bash
# Prometheus 3.x (prometheus + promtool) for the tests, built from the Go module proxy with the
# machine's Go and cached by version, like the Kubernetes binaries of scripts/test-cluster.sh.
# Debian ships only 2.42; users run 3.x, whose TSDB has features 2.42 never writes (native
# histogram chunks of megabytes, zstd WAL, start-timestamp chunks, the chunk snapshot).
#
# Usage:
#   scripts/prometheus3.sh build    build (or find cached) binaries; LAST stdout line = bin dir
#                                   (holding `prometheus` and `promtool`)
#
# Environment:
#   PROMIGRATE_PROM3_VERSION     module version of github.com/prometheus/prometheus
#                                (default v0.316.0, which is Prometheus 3.16.0: the module is
#                                tagged v0.3MM.P for Prometheus 3.MM.P)
#   PROMIGRATE_PROM3_CACHE       where binaries, the wrapper module and build.log live
#                                (default ${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/prometheus-<version>)
#   PROMIGRATE_PROM3_BUILD_JOBS  go build -p (default 2)
#
# The build (scripts/lib/gobuild.sh, shared with scripts/prometheus-operator.sh): a throwaway
# wrapper module in the cache dir that requires the prometheus module (its go.mod has no replace
# or exclude directives, so the wrapper resolves exactly its dependency versions), then
# `go build` of cmd/prometheus and cmd/promtool. Tags:
# `remove_all_sd` leaves out the optional service discoveries (AWS, Azure, GCE, …; static,
# file and HTTP SD stay), which the tests never use and which are a large share of the build;
# no `builtinassets`, so there is no web UI (the HTTP API, which the tests use, is all there).
# The version is stamped as the release does (prometheus/common/version), so `--version`
# says 3.MM.P. A second caller waits on a flock and then finds the binaries.
# Progress goes to stderr; stdout carries only the bin dir.
set -euo pipefail

VERSION=${PROMIGRATE_PROM3_VERSION:-v0.316.0}
CACHE=${PROMIGRATE_PROM3_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/prometheus-$VERSION}
BIN=$CACHE/bin
BUILD_JOBS=${PROMIGRATE_PROM3_BUILD_JOBS:-2}
MODULE=github.com/prometheus/prometheus

# shellcheck source=lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"
GB_TAG=prometheus3

# The Prometheus release a module version stands for: v0.316.0 -> 3.16.0.
release_of() {
	local v=${1#v0.} major minor
	major=${v%%.*}
	[[ $major =~ ^[0-9]{3,}$ ]] || gb_die "PROMIGRATE_PROM3_VERSION=$1 is not a Prometheus 3.x module version (v0.3MM.P)"
	minor=$((10#${major:1}))
	printf '%s.%s.%s\n' "${major:0:1}" "$minor" "${v#*.}"
}

gb_have() { [ -x "$BIN/prometheus" ] && [ -x "$BIN/promtool" ]; }

gb_after_build() {
	"$1/prometheus" --version
	"$1/promtool" --version
}

build() {
	gb_have && return 0
	local release
	release=$(release_of "$VERSION")
	GB_NAME="Prometheus $release"
	GB_WHAT="prometheus + promtool $release"
	GB_COLD="about 4-6 min on 2 cores"
	GB_MODULE=$MODULE GB_VERSION=$VERSION GB_CACHE=$CACHE GB_JOBS=$BUILD_JOBS
	GB_WRAPPER=promigrate.test/prom3build
	GB_PKGS=("$MODULE/cmd/prometheus" "$MODULE/cmd/promtool")
	GB_TAGS=remove_all_sd
	GB_LDFLAGS=$(gb_version_ldflags "$release")
	gb_build
}

case ${1:-} in
build)
	build
	gb_log "binaries: $BIN ($("$BIN/prometheus" --version 2>&1 | head -n 1))"
	echo "$BIN"
	;;
*)
	echo "usage: $0 build" >&2
	exit 2
	;;
esac
