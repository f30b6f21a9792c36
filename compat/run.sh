#!/usr/bin/env bash
# Compatibility suite: real, unmodified third-party MQTT clients (Losant's and
# ThingsBoard's Python SDKs, paho-mqtt 2, MQTT.js 5, mosquitto_pub) against a real
# `fluxgate standalone`. Every check reads its result back through the HTTP API.
#
#   compat/run.sh                      # from anywhere; FLUXGATE_BIN overrides the binary
#   COMPAT_KEEP=1 compat/run.sh        # keep the temp dir (config, logs, database)
#
# Prints `PASS <name>` / `FAIL <name>: <reason>` per check and ends with
# `compat: N passed, M failed`; exits non-zero if any check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# The debug binary `cargo test` builds: under CARGO_TARGET_DIR when that is set.
BIN=${FLUXGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/fluxgate}
case $BIN in /*) ;; *) BIN="$REPO/$BIN" ;; esac
SEEDS=${FLUXGATE_SEEDS:-$REPO/../shared/seeds}

MQTT_PORT=21883
CLIENT_RPC_TIMEOUT_MS=1500
export FG_CLIENT_RPC_TIMEOUT_MS=$CLIENT_RPC_TIMEOUT_MS
WS_PORT=21884
API_PORT=28080
ROLE_METRICS_PORT=29102
MAX_PAYLOAD=262144
SCRIPT_TIMEOUT=90

log() { printf 'compat: %s\n' "$*" >&2; }
# shellcheck source=compat/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
die() { log "$*"; exit 2; }

for tool in python3.11 node npm mosquitto_pub curl timeout sha256sum; do
	command -v "$tool" >/dev/null || die "needs $tool on PATH"
done

# --- 1. Clients, pinned (a second run installs nothing) -------------------------------
# One venv per SDK (their dependencies conflict; see requirements.txt).
venv_section() { # the pins of section $1 of requirements.txt
	awk -v want="$1" '/^#\[/ { cur = substr($0, 3, length($0) - 3); next }
		cur == want && NF && !/^#/ { print }' "$HERE/requirements.txt"
}

ensure_venv() {
	local name=$1 dir="$HERE/.venv/$1" pins stamp
	pins=$(venv_section "$name")
	[ -n "$pins" ] || die "requirements.txt has no [$name] section"
	stamp=$(printf '%s\n' "$pins" | sha256sum | cut -d' ' -f1)
	if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.compat-stamp" 2>/dev/null)" = "$stamp" ]; then
		return
	fi
	log "installing venv $name: $(printf '%s' "$pins" | tr '\n' ' ')"
	rm -rf "$dir"
	python3.11 -m venv "$dir"
	printf '%s\n' "$pins" >"$dir/requirements.txt"
	"$dir/bin/pip" install --quiet --disable-pip-version-check --no-input \
		--require-virtualenv -r "$dir/requirements.txt" >&2
	printf '%s\n' "$stamp" >"$dir/.compat-stamp"
}

ensure_node() {
	local stamp
	stamp=$(cat "$HERE/package.json" "$HERE/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
	if [ -d "$HERE/node_modules/mqtt" ] &&
		[ "$(cat "$HERE/node_modules/.compat-stamp" 2>/dev/null)" = "$stamp" ]; then
		return
	fi
	log "installing MQTT.js (npm)"
	if [ -f "$HERE/package-lock.json" ]; then
		(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
	else
		(cd "$HERE" && npm install --no-audit --no-fund --loglevel=error >&2)
		stamp=$(cat "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)
	fi
	printf '%s\n' "$stamp" >"$HERE/node_modules/.compat-stamp"
}

ensure_venv paho
ensure_venv losant
ensure_venv tb
ensure_node
PY_PAHO="$HERE/.venv/paho/bin/python"
PY_LOSANT="$HERE/.venv/losant/bin/python"
PY_TB="$HERE/.venv/tb/bin/python"

# --- 2. fluxgate standalone ------------------------------------------------------------
# The binary may be briefly missing while someone rebuilds it: wait for it (bounded).
for _ in $(seq 1 60); do
	[ -x "$BIN" ] && break
	log "waiting for $BIN"
	sleep 2
done
[ -x "$BIN" ] || die "no fluxgate binary at $BIN (set FLUXGATE_BIN)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fluxgate-compat.XXXXXX")
FG_PID=
CHECK_PID=
cleanup() {
	local rc=$?
	if [ -n "$CHECK_PID" ] && kill -0 "$CHECK_PID" 2>/dev/null; then
		kill -TERM "$CHECK_PID" 2>/dev/null || true # `timeout` passes it on to the check
		wait "$CHECK_PID" 2>/dev/null || true
	fi
	stop_fluxgate "$FG_PID"
	if [ "${COMPAT_KEEP:-}" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BOOTSTRAP=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
DEVICE_TOKEN_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
cat >"$WORK/fluxgate.toml" <<EOF
data_dir = "$WORK/data"
metrics_addr = "127.0.0.1:$ROLE_METRICS_PORT"

[front]
instance_id = "compat-front"
tcp_addr = "127.0.0.1:$MQTT_PORT"
ws_addr = "127.0.0.1:$WS_PORT"

[front.limits]
max_payload_bytes = $MAX_PAYLOAD

[api]
http_addr = "127.0.0.1:$API_PORT"
bootstrap_token = "$BOOTSTRAP"
device_token_secret = "$DEVICE_TOKEN_SECRET"

[dispatcher]
# Short, so that the client-side RPC timeout check sees its error reply quickly.
client_rpc_timeout_ms = $CLIENT_RPC_TIMEOUT_MS

[log]
filter = "info"
EOF

FG_API="http://127.0.0.1:$API_PORT"
# fluxgate reads FLUXGATE_* variables as settings (FLUXGATE_FRONT__TCP_ADDR, ...), and
# refuses unknown ones: the suite's own two are not for it.
env -u FLUXGATE_BIN -u FLUXGATE_SEEDS \
	"$BIN" -c "$WORK/fluxgate.toml" standalone >"$WORK/fluxgate.out" 2>"$WORK/fluxgate.err" &
FG_PID=$!
log "fluxgate standalone pid $FG_PID, files in $WORK"
ready=
for _ in $(seq 1 300); do
	if ! kill -0 "$FG_PID" 2>/dev/null; then
		tail -n 20 "$WORK/fluxgate.err" >&2 || true
		die "fluxgate exited before it was ready"
	fi
	if grep -qx ready "$WORK/fluxgate.out" && curl -fsS -m 2 "$FG_API/readyz" >/dev/null 2>&1; then
		ready=1
		break
	fi
	sleep 0.1
done
[ -n "$ready" ] || die "fluxgate not ready within 30 s (see $WORK/fluxgate.err)"

# --- 3. Provisioning -----------------------------------------------------------------------
export FG_API MQTT_HOST=127.0.0.1 MQTT_PORT WS_PORT FG_MAX_PAYLOAD=$MAX_PAYLOAD
export FG_PROVISION="$WORK/provision.json" FG_SEEDS="$SEEDS" FG_WORK="$WORK"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
FG_BOOTSTRAP_TOKEN=$BOOTSTRAP "$PY_PAHO" "$HERE/provision.py" ||
	die "provisioning through the API failed"

# --- 4. Checks -------------------------------------------------------------------------------
RESULTS="$WORK/results.txt"
: >"$RESULTS"
# Known failures (known-failures.txt) print as KNOWN, not FAIL; a known one that passes
# is a FAIL, so the list cannot go stale - unless its entry says it is a race that fails
# only sometimes ("flaky:"): then a pass prints as PASS with the issue.
classify() {
	local line name issue flaky
	while IFS= read -r line; do
		name=${line#* }
		name=${name%%:*}
		issue=$(awk -v n="$name" '!/^#/ && $1 == n { print $2 }' "$HERE/known-failures.txt")
		flaky=$(awk -v n="$name" '!/^#/ && $1 == n && $3 == "flaky:" { print "yes" }' "$HERE/known-failures.txt")
		case $line in
		"FAIL "*) [ -n "$issue" ] && line="KNOWN ${line#FAIL } [$issue]" ;;
		"PASS "*)
			if [ -n "$flaky" ]; then
				line="$line (this time; a known race: $issue)"
			elif [ -n "$issue" ]; then
				line="FAIL $name: passes now; remove it from compat/known-failures.txt"
			fi
			;;
		esac
		printf '%s\n' "$line"
	done
}
run_checks() { # label, command...: its PASS/FAIL lines go to stdout and $RESULTS
	local label=$1 rc=0 out
	shift
	out="$WORK/$label.out"
	# In the background and waited for, so that a signal to this script is handled at once.
	timeout -k 5 "$SCRIPT_TIMEOUT" "$@" >"$out" 2>"$WORK/$label.err" &
	CHECK_PID=$!
	wait "$CHECK_PID" || rc=$?
	CHECK_PID=
	grep -E '^(PASS|FAIL) ' "$out" | classify | tee -a "$RESULTS" || true
	if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' "$out"; then
		local why="exited $rc"
		[ "$rc" -eq 124 ] && why="timed out after ${SCRIPT_TIMEOUT}s"
		echo "FAIL $label: $why; $(tail -n 3 "$WORK/$label.err" | tr '\n' ' ')" | tee -a "$RESULTS"
	fi
}

run_checks losant "$PY_LOSANT" "$HERE/losant_checks.py"
run_checks tb-device "$PY_TB" "$HERE/tb_device_checks.py"
run_checks tb-gateway "$PY_TB" "$HERE/tb_gateway_checks.py"
run_checks mqttjs node "$HERE/mqttjs_checks.js"
run_checks paho "$PY_PAHO" "$HERE/paho_checks.py"
run_checks seeds "$PY_PAHO" "$HERE/seed_checks.py"
run_checks api "$PY_PAHO" "$HERE/api_checks.py"

if ! kill -0 "$FG_PID" 2>/dev/null; then
	echo "FAIL fluxgate-alive: fluxgate exited during the checks; $(tail -n 3 "$WORK/fluxgate.err" | tr '\n' ' ')" |
		tee -a "$RESULTS"
fi

passed=$(grep -c '^PASS ' "$RESULTS" || true)
failed=$(grep -c '^FAIL ' "$RESULTS" || true)
known=$(grep -c '^KNOWN ' "$RESULTS" || true)
echo "compat: $passed passed, $failed failed, $known known failures (compat/known-failures.txt)"
[ "$failed" -eq 0 ]
