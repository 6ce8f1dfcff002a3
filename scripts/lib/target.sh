# Sourced by the scripts that run the release binary: where cargo put it. cargo builds into
# $CARGO_TARGET_DIR when it is set (relative to the checkout, where make runs cargo), else
# target/. Needs ROOT (the checkout).
release_bin() {
	local dir=${CARGO_TARGET_DIR:-target}
	case $dir in /*) ;; *) dir=$ROOT/$dir ;; esac
	printf '%s\n' "$dir/release/promigrate"
}
