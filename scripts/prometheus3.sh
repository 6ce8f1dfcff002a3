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
# The build: a throwaway wrapper module in the cache dir that requires the prometheus module
# (its go.mod has no replace or exclude directives, so the wrapper resolves exactly its
# dependency versions), then `go build` of cmd/prometheus and cmd/promtool. Tags:
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

log() { printf 'prometheus3: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# The Prometheus release a module version stands for: v0.316.0 -> 3.16.0.
release_of() {
	local v=${1#v0.} major minor
	major=${v%%.*}
	[[ $major =~ ^[0-9]{3,}$ ]] || die "PROMIGRATE_PROM3_VERSION=$1 is not a Prometheus 3.x module version (v0.3MM.P)"
	minor=$((10#${major:1}))
	printf '%s.%s.%s\n' "${major:0:1}" "$minor" "${v#*.}"
}

have_binaries() { [ -x "$BIN/prometheus" ] && [ -x "$BIN/promtool" ]; }

build() {
	have_binaries && return 0
	command -v go >/dev/null 2>&1 || die "go not found: it is needed to build Prometheus $VERSION"
	command -v flock >/dev/null 2>&1 || die "flock not found (util-linux)"
	local release
	release=$(release_of "$VERSION")
	mkdir -p "$(dirname "$CACHE")"
	# One build at a time per version: a second caller waits here, then finds the binaries.
	exec 9>"$CACHE.lock"
	if ! flock -n 9; then
		log "another process is building Prometheus $release; waiting for its lock ($CACHE.lock)"
		flock 9
	fi
	if have_binaries; then
		exec 9>&-
		return 0
	fi
	local start=$SECONDS src=$CACHE/src buildlog=$CACHE/build.log
	mkdir -p "$src"
	log "building prometheus + promtool $release ($MODULE@$VERSION) into $BIN (cold: about 4-6 min on 2 cores; log: $buildlog)"
	(
		set -euo pipefail
		cd "$src"
		# The machine's Go unless the caller names another approved toolchain; modules only
		# from the module proxy (no fall-back to fetching a repository directly).
		export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOFLAGS=-buildvcs=false GOWORK=off CGO_ENABLED=0
		GOPROXY=$(go env GOPROXY | sed -e 's/[,|]direct$//')
		export GOPROXY
		export GOMAXPROCS=${GOMAXPROCS:-$BUILD_JOBS}
		local gomod godir
		gomod=$(timeout 1200 go mod download -json "$MODULE@$VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
		[ -f "$gomod" ] || { echo "cannot download $MODULE@$VERSION"; exit 1; }
		# The wrapper needs the module's go line (a Go older than it refuses to build).
		godir=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
		if grep -qE '^[[:space:]]*(replace|exclude)\b' "$gomod"; then
			# go get would not apply them from a dependency: copy them into the wrapper.
			echo "note: $MODULE@$VERSION has replace/exclude directives; copying them"
		fi
		{
			echo "module promigrate.test/prom3build"
			echo
			echo "go ${godir:-1.24.0}"
			echo
			echo "require $MODULE $VERSION"
			awk '/^(replace|exclude)[[:space:]]*\($/ {p=1} p {print} p && /^\)/ {p=0; next}
				/^(replace|exclude)[[:space:]]+[^(]/ {print}' "$gomod"
		} >go.mod
		rm -f go.sum
		timeout 1200 go get "$MODULE/cmd/prometheus@$VERSION" "$MODULE/cmd/promtool@$VERSION"
		local v=github.com/prometheus/common/version
		local ld="-s -w -X $v.Version=$release -X $v.Revision=$VERSION -X $v.Branch=HEAD"
		ld="$ld -X $v.BuildUser=promigrate-tests -X $v.BuildDate=19700101-00:00:00"
		rm -rf "$CACHE/bin.tmp"
		mkdir -p "$CACHE/bin.tmp"
		go version
		timeout 2400 go build -p "$BUILD_JOBS" -trimpath -tags remove_all_sd -ldflags "$ld" -o "$CACHE/bin.tmp/" \
			"$MODULE/cmd/prometheus" "$MODULE/cmd/promtool"
		"$CACHE/bin.tmp/prometheus" --version
		"$CACHE/bin.tmp/promtool" --version
	) >"$buildlog" 2>&1 || {
		tail -n 30 "$buildlog" >&2
		die "building Prometheus $release failed (full log: $buildlog)"
	}
	rm -rf "$BIN"
	mv "$CACHE/bin.tmp" "$BIN"
	log "built Prometheus $release in $((SECONDS - start)) s"
	exec 9>&-
}

case ${1:-} in
build)
	build
	log "binaries: $BIN ($("$BIN/prometheus" --version 2>&1 | head -n 1))"
	echo "$BIN"
	;;
*)
	echo "usage: $0 build" >&2
	exit 2
	;;
esac
