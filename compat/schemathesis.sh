#!/usr/bin/env bash
# schemathesis (property-based API testing, pinned from PyPI) against the `/openapi.json` of
# a real `fluxgate standalone`: every documented operation gets generated requests, valid
# and invalid, with the bootstrap admin token, and every answer is checked against the
# document (status, content type, body schema, headers), for server errors, for 405 with
# `Allow` on undocumented methods, and for operations that answer without their token.
#
#   compat/schemathesis.sh                    # FLUXGATE_BIN overrides the binary
#   ST_MAX_EXAMPLES=200 compat/schemathesis.sh   # more examples per operation (default 20)
#   ST_SEED=123 compat/schemathesis.sh        # another seed (default fixed, so CI repeats itself)
#   ST_KEEP=1 compat/schemathesis.sh          # keep the temp dir (config, logs, reports)
#   ST_CHECKS=all compat/schemathesis.sh      # other checks (schemathesis --checks)
#
# Ends with `schemathesis: N passed, M failed` (operations); exits non-zero if any check
# failed on any operation, or schemathesis could not run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# The debug binary `cargo test` builds: under CARGO_TARGET_DIR when that is set.
BIN=${FLUXGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/fluxgate}
case $BIN in /*) ;; *) BIN="$REPO/$BIN" ;; esac
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-20}
SEED=${ST_SEED:-20261207}
# The whole run's bound (seconds): past it schemathesis is stopped and the run fails.
RUN_TIMEOUT=${ST_RUN_TIMEOUT:-900}

log() { printf 'schemathesis: %s\n' "$*" >&2; }
# shellcheck source=compat/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
die() {
	log "$*"
	echo "schemathesis: 0 passed, 1 failed"
	exit 2
}

for tool in python3.11 curl sha256sum timeout; do
	command -v "$tool" >/dev/null || die "needs $tool on PATH"
done

# --- 1. schemathesis, pinned (a second run installs nothing) ------------------------------
VENV="$HERE/.venv/schemathesis"
pins=$(awk '/^#\[/ { cur = substr($0, 3, length($0) - 3); next }
	cur == "schemathesis" && NF && !/^#/ { print }' "$HERE/requirements.txt")
[ -n "$pins" ] || die "compat/requirements.txt has no [schemathesis] section"
stamp=$(printf '%s\n' "$pins" | sha256sum | cut -d' ' -f1)
if ! [ -x "$VENV/bin/schemathesis" ] || [ "$(cat "$VENV/.compat-stamp" 2>/dev/null)" != "$stamp" ]; then
	log "installing $(printf '%s' "$pins" | grep -i '^schemathesis==') and its pinned dependencies"
	rm -rf "$VENV"
	python3.11 -m venv "$VENV"
	printf '%s\n' "$pins" >"$VENV/requirements.txt"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
		--require-virtualenv --no-deps -r "$VENV/requirements.txt" >&2
	"$VENV/bin/pip" check >&2 || die "the pinned set is incomplete (pip check)"
	printf '%s\n' "$stamp" >"$VENV/.compat-stamp"
fi

# --- 2. fluxgate standalone on free loopback ports, data in a temp dir ----------------------
for _ in $(seq 1 60); do
	[ -x "$BIN" ] && break
	log "waiting for $BIN"
	sleep 2
done
[ -x "$BIN" ] || die "no fluxgate binary at $BIN (set FLUXGATE_BIN)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fluxgate-schemathesis.XXXXXX")
FG_PID=
ST_PID=
cleanup() {
	local rc=$?
	if [ -n "$ST_PID" ] && kill -0 "$ST_PID" 2>/dev/null; then
		kill -TERM "$ST_PID" 2>/dev/null || true
		wait "$ST_PID" 2>/dev/null || true
	fi
	stop_fluxgate "$FG_PID"
	if [ "${ST_KEEP:-}" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four free ports: the kernel picks them (bound together, so they differ), then they are
# released for fluxgate. Another process could take one in between; fluxgate then fails
# to start and says which address.
read -r API_PORT MQTT_PORT FRONT_HTTP_PORT METRICS_PORT < <(python3.11 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
')

BOOTSTRAP=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
cat >"$WORK/fluxgate.toml" <<EOF
data_dir = "$WORK/data"
metrics_addr = "127.0.0.1:$METRICS_PORT"

[front]
instance_id = "schemathesis-front"
tcp_addr = "127.0.0.1:$MQTT_PORT"
http_addr = "127.0.0.1:$FRONT_HTTP_PORT"

[api]
http_addr = "127.0.0.1:$API_PORT"
bootstrap_token = "$BOOTSTRAP"
# A two-way RPC to a device that never answers waits at most this long.
rpc_timeout_max_ms = 1000

[log]
filter = "warn"
EOF

API="http://127.0.0.1:$API_PORT"
# fluxgate reads FLUXGATE_* variables as settings and refuses unknown ones.
env -u FLUXGATE_BIN "$BIN" -c "$WORK/fluxgate.toml" standalone >"$WORK/fluxgate.out" 2>"$WORK/fluxgate.err" &
FG_PID=$!
log "fluxgate standalone pid $FG_PID, API $API, files in $WORK"
ready=
for _ in $(seq 1 300); do
	if ! kill -0 "$FG_PID" 2>/dev/null; then
		tail -n 20 "$WORK/fluxgate.err" >&2 || true
		die "fluxgate exited before it was ready"
	fi
	if grep -qx ready "$WORK/fluxgate.out" && curl -fsS -m 2 "$API/readyz" >/dev/null 2>&1; then
		ready=1
		break
	fi
	sleep 0.1
done
[ -n "$ready" ] || die "fluxgate not ready within 30 s (see $WORK/fluxgate.err)"

# --- 3. Data the generated requests can find (schemathesis.toml binds half of the
# application and device ids it draws to these) --------------------------------------------
provision() { # method, path, body
	curl -fsS -m 10 -X "$1" "$API$2" -H "Authorization: Bearer $BOOTSTRAP" \
		-H 'Content-Type: application/json' -d "$3" >/dev/null ||
		die "provisioning through the API failed: $1 $2"
}
provision POST /applications '{"id": "st"}'
provision POST /applications/st/devices \
	'{"id": "st-dev", "attributes": [{"name": "t", "kind": "number"}]}'
provision POST /applications/st/devices '{"id": "st-gw", "kind": "gateway"}'
provision POST /applications/st/devices \
	'{"id": "st-peripheral", "kind": "peripheral", "peripheral_policy": {"policy": "any_gateway"}}'
provision POST /applications/st/devices/st-dev/state '{"data": {"t": 21.5}}'

# --- 4. schemathesis -----------------------------------------------------------------------
# Every check schemathesis has that needs nothing more than the document and one token,
# but positive_data_acceptance (a schema-valid request must not get 400/422): the API has
# rules JSON Schema cannot state - PUT's body id must be the path's, `page` must be a
# token the server issued, `from` must not be after `to`, `application` is required with
# the bootstrap token only - and JSON Schema counts 1.0 as an integer where the API's
# integer fields want 1. Those answers are 400 naming the field, as documented.
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance
CHECKS=$CHECKS,response_headers_conformance,response_schema_conformance
CHECKS=$CHECKS,negative_data_rejection,missing_required_header
CHECKS=$CHECKS,unsupported_method,allow_header_conformance,ignored_auth
CHECKS=$CHECKS,use_after_free,ensure_resource_availability
CHECKS=${ST_CHECKS:-$CHECKS}

started=$SECONDS
set +e
(
	cd "$WORK"
	exec timeout -k 10 "$RUN_TIMEOUT" "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis.toml" --no-color \
		run "$API/openapi.json" \
		--header "Authorization: Bearer $BOOTSTRAP" \
		--checks "$CHECKS" \
		--max-examples "$MAX_EXAMPLES" \
		--seed "$SEED" \
		--workers 1 \
		--request-timeout 20 \
		--report junit,ndjson --report-dir "$WORK/report" \
		--report-junit-path "$WORK/report/junit.xml" \
		--output-truncate false
) >"$WORK/schemathesis.out" 2>&1 &
ST_PID=$!
wait "$ST_PID"
st_rc=$?
ST_PID=
set -e
cat "$WORK/schemathesis.out"
log "ran in $((SECONDS - started)) s (schemathesis exit code $st_rc)"

if ! kill -0 "$FG_PID" 2>/dev/null; then
	log "fluxgate exited during the run: $(tail -n 5 "$WORK/fluxgate.err" | tr '\n' ' ')"
	st_rc=1
fi

# Counts: operations and their verdicts from the JUnit report (one test case per
# operation, failed if any check failed on any of its requests; the stateful scenarios are
# one more case), requests from schemathesis's own summary.
"$VENV/bin/python" - "$WORK/report/junit.xml" "$WORK/schemathesis.out" "$st_rc" <<'EOF'
import re
import sys
import xml.etree.ElementTree as ET

junit, out, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    root = ET.parse(junit).getroot()
except (OSError, ET.ParseError) as e:
    print(f"schemathesis: no report ({e})", file=sys.stderr)
    print("schemathesis: 0 passed, 1 failed")
    sys.exit(1)
cases = root.findall(".//testcase")
bad = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
for c in bad:
    print(f"schemathesis: FAIL {c.get('name')}", file=sys.stderr)
ops = [c for c in cases if c.get("name") != "Stateful tests"]
summary = open(out, encoding="utf-8", errors="replace").read()
m = re.search(r"(\d+) generated, (\d+) passed(?:, (\d+) failed)?", summary)
generated = m.group(1) if m else "?"
failed_requests = (m.group(3) or "0") if m else "?"
failed = len(bad) + (1 if rc != 0 and not bad else 0)
print(
    f"schemathesis: {len(ops)} operations, {generated} generated requests, "
    f"{failed_requests} failed, {len(bad)} operations with failures (exit code {rc})"
)
print(f"schemathesis: {len(cases) - len(bad)} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
