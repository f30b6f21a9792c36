#!/usr/bin/env bash
# Two builds of the front side by side under the same load, alternating runs: the release
# `fluxgate-loadtest` binaries NEW and OLD (e.g. of HEAD and of an earlier commit), each
# running `front` on its own port, first on the in-process bus, then on the Kafka at
# $KAFKA_BROKERS (scripts/services/kafka). Prints one line per run; see RESULTS.md §6.
#
#   NEW=/tmp/lt-new OLD=/tmp/lt-old loadtests/compare-fronts.sh
#
# NEW_ARGS / OLD_ARGS add `front` options to one side (one build, two settings:
# `NEW=$LT OLD=$LT NEW_ARGS="--telemetry down" …`); FRONT_LOGS names a folder for the
# fronts' output (their span counters at exit), /dev/null otherwise.
set -euo pipefail
: "${NEW:?path of the new fluxgate-loadtest}" "${OLD:?path of the old fluxgate-loadtest}"
RUNS="${RUNS:-3}"
for bus in memory kafka; do
  out() { if [ -n "${FRONT_LOGS:-}" ]; then echo "$FRONT_LOGS/$1-$bus.log"; else echo /dev/null; fi; }
  # shellcheck disable=SC2086 # the extra options are words
  "$NEW" front --addr 127.0.0.1:18851 --devices 1100 --bus "$bus" ${NEW_ARGS:-} >"$(out new)" 2>&1 &
  N=$!
  # shellcheck disable=SC2086
  "$OLD" front --addr 127.0.0.1:18852 --devices 1100 --bus "$bus" ${OLD_ARGS:-} >"$(out old)" 2>&1 &
  O=$!
  trap 'kill $N $O 2>/dev/null || true' EXIT
  for p in 18851 18852; do
    for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  done
  sleep 3 # the fronts' consumers join their groups
  for run in $(seq 1 "$RUNS"); do
    echo -n "$bus new run $run: "
    "$NEW" publish --addr 127.0.0.1:18851 --connections 1000 --messages 100 --window 1 | tail -1
    echo -n "$bus old run $run: "
    "$OLD" publish --addr 127.0.0.1:18852 --connections 1000 --messages 100 --window 1 | tail -1
  done
  kill $N $O
  wait $N $O 2>/dev/null || true
done
