# shellcheck shell=bash
# Shared by scripts/prometheus3.sh and scripts/prometheus-operator.sh (sourced, not run): build
# commands of one version of a Go module from the Go module proxy with the machine's Go, in a
# throwaway wrapper module, cached by version. A second caller waits on a flock and then finds
# the result.
#
# The caller sets these, defines gb_have and gb_after_build, then calls gb_build:
#   GB_TAG      log prefix, e.g. prometheus3
#   GB_NAME     what is built, for messages, e.g. "Prometheus 3.16.0"
#   GB_WHAT     the binaries, for the progress message, e.g. "prometheus + promtool 3.16.0"
#   GB_COLD     the cold build time, for the progress message
#   GB_MODULE   module path; GB_VERSION its version
#   GB_WRAPPER  the wrapper module's path, e.g. promigrate.test/prom3build
#   GB_PKGS     array: the packages to `go get` and `go build`
#   GB_TAGS     `go build -tags` (may be empty)
#   GB_LDFLAGS  `go build -ldflags` (gb_version_ldflags makes the usual ones)
#   GB_JOBS     `go build -p`
#   GB_CACHE    the cache dir: $GB_CACHE/bin (the binaries), src/ (the wrapper module),
#               build.log; the lock is $GB_CACHE.lock
#   gb_have           status 0 when the cache holds everything (checked before and after
#                     the lock is taken)
#   gb_after_build D  runs after `go build` with the new binaries in D (not yet in place) and
#                     the module's source dir in $GB_MODDIR; its output goes to build.log:
#                     checks (`--version`), files copied from the module. A failure fails the
#                     build.
# Progress goes to stderr (gb_log); stdout is left to the caller.

gb_log() { printf '%s: %s\n' "$GB_TAG" "$*" >&2; }
gb_die() {
	gb_log "ERROR: $*"
	exit 1
}

# gb_version_ldflags RELEASE: -s -w and the version stamped as the releases do
# (github.com/prometheus/common/version), so `--version` says RELEASE.
gb_version_ldflags() {
	local v=github.com/prometheus/common/version
	local ld="-s -w -X $v.Version=$1 -X $v.Revision=$GB_VERSION -X $v.Branch=HEAD"
	printf '%s\n' "$ld -X $v.BuildUser=promigrate-tests -X $v.BuildDate=19700101-00:00:00"
}

# gb_wrapper_gomod GOMOD: the wrapper's go.mod on stdout. It requires the module at GB_VERSION
# with the module's go line (a Go older than it refuses to build). `go get` does not apply
# replace/exclude directives of a dependency, so they are copied, except a replace by a local
# path inside the module (e.g. `…/pkg/client => ./pkg/client`, a nested module of the same
# repository): no such path exists here, so that module is required at GB_VERSION instead
# (what the module's own build uses).
gb_wrapper_gomod() {
	local gomod=$1 godir m
	godir=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
	echo "module $GB_WRAPPER"
	echo
	echo "go ${godir:-1.24.0}"
	echo
	echo "require $GB_MODULE $GB_VERSION"
	local locals
	locals=$(gb_local_replaces "$gomod")
	for m in $locals; do
		case $m in
		"$GB_MODULE"/*) echo "require $m $GB_VERSION" ;;
		*)
			echo "$GB_MODULE@$GB_VERSION replaces $m by a local path outside the module" >&2
			return 1
			;;
		esac
	done
	# Replace and exclude directives (blocks and single lines), without the local replaces.
	awk '
		function islocal(s) { return s ~ /=>[[:space:]]*\.\.?\// }
		/^(replace|exclude)[[:space:]]*\($/ { blk = $1; n = 0; next }
		blk != "" && /^[[:space:]]*\)/ {
			if (n > 0) { print blk " ("; for (i = 1; i <= n; i++) print body[i]; print ")" }
			blk = ""; next
		}
		blk != "" { if (!(blk == "replace" && islocal($0))) body[++n] = $0; next }
		/^(replace|exclude)[[:space:]]+[^(]/ { if (!($1 == "replace" && islocal($0))) print }
	' "$gomod"
}

# gb_local_replaces GOMOD: the module paths the module replaces by a local path, one a line.
gb_local_replaces() {
	awk '
		/^replace[[:space:]]*\($/ { blk = 1; next }
		blk && /^[[:space:]]*\)/ { blk = 0; next }
		blk && /=>[[:space:]]*\.\.?\// { print $1; next }
		/^replace[[:space:]]+[^(]/ && /=>[[:space:]]*\.\.?\// { print $2 }
	' "$1"
}

gb_build() {
	gb_have && return 0
	command -v go >/dev/null 2>&1 || gb_die "go not found: it is needed to build $GB_NAME"
	command -v flock >/dev/null 2>&1 || gb_die "flock not found (util-linux)"
	mkdir -p "$(dirname "$GB_CACHE")"
	# One build at a time per version: a second caller waits here, then finds the result.
	exec 9>"$GB_CACHE.lock"
	if ! flock -n 9; then
		gb_log "another process is building $GB_NAME; waiting for its lock ($GB_CACHE.lock)"
		flock 9
	fi
	if gb_have; then
		exec 9>&-
		return 0
	fi
	local start=$SECONDS src=$GB_CACHE/src buildlog=$GB_CACHE/build.log
	mkdir -p "$src"
	gb_log "building $GB_WHAT ($GB_MODULE@$GB_VERSION) into $GB_CACHE/bin (cold: $GB_COLD; log: $buildlog)"
	(
		set -euo pipefail
		cd "$src"
		# The machine's Go unless the caller names another approved toolchain; modules only
		# from the module proxy (no fall-back to fetching a repository directly).
		export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOFLAGS=-buildvcs=false GOWORK=off CGO_ENABLED=0
		GOPROXY=$(go env GOPROXY | sed -e 's/[,|]direct$//')
		export GOPROXY
		export GOMAXPROCS=${GOMAXPROCS:-$GB_JOBS}
		local dl gomod
		dl=$(timeout 1200 go mod download -json "$GB_MODULE@$GB_VERSION")
		gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")
		GB_MODDIR=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")
		[ -f "$gomod" ] && [ -d "$GB_MODDIR" ] || { echo "cannot download $GB_MODULE@$GB_VERSION"; exit 1; }
		if grep -qE '^[[:space:]]*(replace|exclude)\b' "$gomod"; then
			echo "note: $GB_MODULE@$GB_VERSION has replace/exclude directives; copying them (a local path inside the module: required at $GB_VERSION instead)"
		fi
		gb_wrapper_gomod "$gomod" >go.mod
		cat go.mod
		rm -f go.sum
		local gets=() p
		for p in "${GB_PKGS[@]}"; do gets+=("$p@$GB_VERSION"); done
		timeout 1200 go get "${gets[@]}"
		rm -rf "$GB_CACHE/bin.tmp"
		mkdir -p "$GB_CACHE/bin.tmp"
		go version
		timeout 2400 go build -p "$GB_JOBS" -trimpath ${GB_TAGS:+-tags "$GB_TAGS"} -ldflags "$GB_LDFLAGS" \
			-o "$GB_CACHE/bin.tmp/" "${GB_PKGS[@]}"
		gb_after_build "$GB_CACHE/bin.tmp"
	) >"$buildlog" 2>&1 || {
		tail -n 30 "$buildlog" >&2
		gb_die "building $GB_NAME failed (full log: $buildlog)"
	}
	rm -rf "$GB_CACHE/bin"
	mv "$GB_CACHE/bin.tmp" "$GB_CACHE/bin"
	gb_log "built $GB_NAME in $((SECONDS - start)) s"
	exec 9>&-
}
