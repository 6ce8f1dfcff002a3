#!/usr/bin/env bash
# The Prometheus Operator (github.com/prometheus-operator/prometheus-operator, cmd/operator) and
# its CRDs for the tests, built from the Go module proxy with the machine's Go and cached by
# version, like scripts/prometheus3.sh. The tests run it out of cluster against the control
# plane of scripts/test-cluster.sh (tests/common/cluster.rs: TestCluster::start_operator).
#
# Usage:
#   scripts/prometheus-operator.sh build   build (or find cached) binary and CRDs; LAST stdout
#                                          line = the cache dir, holding bin/operator and
#                                          crd/*.yaml (the module's example/prometheus-operator-crd)
#
# Environment:
#   PROMIGRATE_OPERATOR_VERSION     module version (default v0.93.1: the newest whose nested
#                                   modules pkg/client and pkg/apis/monitoring the proxy serves
#                                   at the same version)
#   PROMIGRATE_OPERATOR_CACHE       where binary, CRDs, the wrapper module and build.log live
#                                   (default ${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/prometheus-operator-<version>)
#   PROMIGRATE_OPERATOR_BUILD_JOBS  go build -p (default 2)
#
# The build (scripts/lib/gobuild.sh): a throwaway wrapper module that requires the operator
# module and, at the same version, its nested modules pkg/client and pkg/apis/monitoring (the
# operator's go.mod replaces them by ./pkg/..., which a dependency's go.mod cannot do; without
# the requires the wrapper would get their v0.93.0), then `go build` of cmd/operator with the
# version stamped as the release does (prometheus/common/version; it also names the default
# config-reloader image, quay.io/prometheus-operator/prometheus-config-reloader:v<version>).
# A second caller waits on a flock and then finds the result.
#
# Measured on this 2-core machine (v0.93.1, Go 1.26.8): a cold build, with empty Go module and
# build caches, takes 4 min 14 s (about 12 s of it fetching the modules from the proxy; 1.1 GB
# peak resident memory; a 69 MB binary, 1.2 GB of Go build cache, 620 MB of modules); 28 s
# with a warm Go build cache (only the link); 0.03 s once built.
# Progress goes to stderr; stdout carries only the cache dir.
set -euo pipefail

VERSION=${PROMIGRATE_OPERATOR_VERSION:-v0.93.1}
CACHE=${PROMIGRATE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/promigrate/prometheus-operator-$VERSION}
BIN=$CACHE/bin
CRD=$CACHE/crd
BUILD_JOBS=${PROMIGRATE_OPERATOR_BUILD_JOBS:-2}
MODULE=github.com/prometheus-operator/prometheus-operator

# shellcheck source=lib/gobuild.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/gobuild.sh"
GB_TAG=prometheus-operator

[[ $VERSION =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || gb_die "PROMIGRATE_OPERATOR_VERSION=$VERSION is not a release version (vX.Y.Z)"
RELEASE=${VERSION#v}

gb_have() { [ -x "$BIN/operator" ] && [ -f "$CRD/monitoring.coreos.com_prometheuses.yaml" ]; }

# The CRDs, next to the binary (put in place before the binary, which marks the cache done).
gb_after_build() {
	"$1/operator" --version
	"$1/operator" --version 2>&1 | grep -q "version $RELEASE " || {
		echo "the operator does not report version $RELEASE"
		return 1
	}
	go list -m all | grep "^$MODULE"
	local src=$GB_MODDIR/example/prometheus-operator-crd
	[ -f "$src/monitoring.coreos.com_prometheuses.yaml" ] || {
		echo "no CRDs in $src"
		return 1
	}
	rm -rf "$CRD.tmp" "$CRD"
	mkdir -p "$CRD.tmp"
	cp "$src"/*.yaml "$CRD.tmp/"
	chmod 644 "$CRD.tmp"/*.yaml
	mv "$CRD.tmp" "$CRD"
	ls "$CRD"
}

build() {
	GB_NAME="the Prometheus Operator $RELEASE"
	GB_WHAT="the Prometheus Operator $RELEASE (cmd/operator) + CRDs"
	GB_COLD="about 4-5 min on 2 cores"
	GB_MODULE=$MODULE GB_VERSION=$VERSION GB_CACHE=$CACHE GB_JOBS=$BUILD_JOBS
	GB_WRAPPER=promigrate.test/operatorbuild
	GB_PKGS=("$MODULE/cmd/operator")
	GB_TAGS=
	GB_LDFLAGS=$(gb_version_ldflags "$RELEASE")
	gb_build
}

case ${1:-} in
build)
	build
	gb_log "binary: $BIN/operator ($("$BIN/operator" --short-version 2>&1 | head -n 1)), CRDs: $CRD"
	echo "$CACHE"
	;;
*)
	echo "usage: $0 build" >&2
	exit 2
	;;
esac
