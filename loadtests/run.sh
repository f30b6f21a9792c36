#!/usr/bin/env bash
# Side by side on this machine: the fluxgate MQTT front (into the Kafka at $KAFKA_BROKERS,
# e.g. scripts/services/kafka) and Mosquitto (Debian package, plain relay) under the same client load,
# then memory per idle connection for both. Results go to stdout; see RESULTS.md.
#
#   cargo build --release -p fluxgate-loadtest
#   KAFKA_BROKERS=127.0.0.1:19092 loadtests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/fluxgate-loadtest
KAFKA="${KAFKA_BROKERS:-127.0.0.1:19092}"
CONNS="${CONNS:-1000}"
MSGS="${MSGS:-100}"
WINDOW="${WINDOW:-1}"
IDLE="${IDLE:-10000}"
RUNS="${RUNS:-3}"
FRONT=127.0.0.1:18831
MOSQ=127.0.0.1:18832
WORK="$(mktemp -d)"

cat >"$WORK/mosquitto.conf" <<CONF
listener ${MOSQ##*:} 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest none
CONF

"$BIN" front --addr "$FRONT" --devices $((IDLE + CONNS)) --brokers "$KAFKA" >"$WORK/front.log" 2>&1 &
FRONT_PID=$!
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosq.log" 2>&1 &
MOSQ_PID=$!
trap 'kill $FRONT_PID $MOSQ_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}
wait_port "$FRONT"
wait_port "$MOSQ"
sleep 2 # the front's consumer joins its group

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "== QoS 1 publish: $CONNS connections x $MSGS messages, window $WINDOW ($RUNS runs, alternating)"
for run in $(seq 1 "$RUNS"); do
  echo -n "fluxgate run $run: "
  "$BIN" publish --addr "$FRONT" --connections "$CONNS" --messages "$MSGS" --window "$WINDOW" | tail -1
  echo -n "mosquitto run $run: "
  "$BIN" publish --addr "$MOSQ" --connections "$CONNS" --messages "$MSGS" --window "$WINDOW" --auth false | tail -1
done

idle() { # name pid addr auth
  local before after
  sleep 2
  before=$(rss_kib "$2")
  "$BIN" idle --addr "$3" --connections "$IDLE" --hold-secs 20 --auth "$4" >"$WORK/idle.log" 2>&1 &
  local idle_pid=$!
  for _ in $(seq 1 600); do
    grep -q holding "$WORK/idle.log" && break
    sleep 0.2
  done
  sleep 5
  after=$(rss_kib "$2")
  echo "$1: $(grep holding "$WORK/idle.log"); RSS ${before} KiB -> ${after} KiB: $(( (after - before) * 1024 / IDLE )) bytes per connection"
  wait "$idle_pid"
}
echo "== memory per idle connection ($IDLE connections)"
idle fluxgate "$FRONT_PID" "$FRONT" true
idle mosquitto "$MOSQ_PID" "$MOSQ" false
