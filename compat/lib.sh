# Shell helpers the compat scripts share (sourced; the caller defines `log`).

# stop_fluxgate PID: SIGTERM, up to 15 s for the drain, then SIGKILL; waits for it.
stop_fluxgate() {
	local pid=$1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "fluxgate (pid $pid) did not stop in 15 s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}
