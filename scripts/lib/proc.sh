# shellcheck shell=bash
# Shared by scripts/gen-tsdb.sh and scripts/gen-tsdb3.sh (sourced, not run).

# pid_alive PID: true while the process exists and is not a zombie.
pid_alive() {
	local st=
	# `st=$(<file)` ends the whole script (set -e) when the process is reaped between a
	# check and the read (seen in CI); a failed redirection of `read` is only a status.
	# The whole file (-d ''): a process name may hold a newline.
	{ IFS= read -r -d '' st <"/proc/$1/stat" || :; } 2>/dev/null
	[[ $st == *') '* ]] || return 1
	st=${st##*) }
	[[ ${st:0:1} != Z ]]
}
