# Sourced by the benchmark scripts (not run on its own).
# link_blocks DST GIB: hard-links blocks of the cached bench set
# (target/fixtures/bench-blocks-4gib), oldest first, into DST until at least GIB GiB;
# prints the bytes linked.
link_blocks() {
	local dst=$1 want=$(($2 * 1024 * 1024 * 1024)) have=0 b
	for b in $(ls target/fixtures/bench-blocks-4gib | sort); do
		[ "$have" -ge "$want" ] && break
		cp -al "target/fixtures/bench-blocks-4gib/$b" "$dst/$b"
		have=$((have + $(du -sb "$dst/$b" | cut -f1)))
	done
	echo "$have"
}
