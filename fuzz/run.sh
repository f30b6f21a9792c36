#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on a temporary copy of the committed corpus.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 30)
#
# Installs cargo-fuzz (pinned) when missing, builds the targets instrumented for libFuzzer
# on stable Rust (`-s none`: no sanitizer, which would need nightly), runs each target for
# SECONDS_PER_TARGET seconds starting from fuzz/corpus/<target>/ (copied: the committed
# corpus does not grow), and prints one line per target, then the total:
#
#   losant                          1234567 execs   2345 corpus   0 crashes
#   fuzz: 10 targets, 12345678 executions, 0 crashes
#
# Exits non-zero when a target crashed (a panic is a finding): its input is kept in
# fuzz/artifacts/<target>/; replay it with `cargo fuzz run -s none <target> <file>`.
#
# Environment: FUZZ_TARGETS (space-separated subset), CARGO_BUILD_JOBS (build jobs),
# CARGO_TARGET_DIR (builds go to $CARGO_TARGET_DIR/fuzz; default fuzz/target),
# FUZZ_KEEP_CORPUS=1 (print where the grown corpus is and leave it).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET="${1:-30}"
FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$FUZZ_DIR/.."

if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

TARGET_DIR="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
TARGET_DIR="${TARGET_DIR:-$FUZZ_DIR/target}"
FUZZ=(cargo fuzz run -s none --target-dir "$TARGET_DIR")

echo "building the fuzz targets (instrumented, release with debug assertions)"
t0=$SECONDS
cargo fuzz build -s none --target-dir "$TARGET_DIR"
echo "built in $((SECONDS - t0)) s"

read -r -a TARGETS <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"

dict_of() {
  case "$1" in
    topic) echo topic ;;
    front_accepts_pipeline_decodes) echo publish ;;
    config) echo toml ;;
    *) echo json ;;
  esac
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fluxgate-fuzz.XXXXXX")"
if [ "${FUZZ_KEEP_CORPUS:-}" != 1 ]; then
  trap 'rm -rf "$WORK"' EXIT
fi

total_execs=0
total_crashes=0
failed=()
for t in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$t"
  mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
  cp -r "$FUZZ_DIR/corpus/$t/." "$corpus/"
  log="$WORK/$t.log"
  before=$(find "$FUZZ_DIR/artifacts/$t" -type f | wc -l)
  set +e
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: one that takes 2 GB, a
  # memory blow-up. Both count as crashes.
  "${FUZZ[@]}" "$t" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" \
    -timeout=10 -rss_limit_mb=2048 \
    -dict="$FUZZ_DIR/dict/$(dict_of "$t").dict" \
    -artifact_prefix="$FUZZ_DIR/artifacts/$t/" \
    -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  execs=${execs:-0}
  size=$(find "$corpus" -type f | wc -l)
  crashes=$(( $(find "$FUZZ_DIR/artifacts/$t" -type f | wc -l) - before ))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1 # died without leaving an input (e.g. the build or libFuzzer itself failed)
  fi
  printf '%-32s %10s execs %6s corpus %3s crashes\n' "$t" "$execs" "$size" "$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed+=("$t")
    { grep -A1 "panicked at" "$log" | head -4
      grep -E "ERROR: libFuzzer|Test unit written" "$log" | head -4; } | sed 's/^/    /'
  fi
  total_execs=$((total_execs + execs))
  total_crashes=$((total_crashes + crashes))
done

echo "fuzz: ${#TARGETS[@]} targets, ${total_execs} executions, ${total_crashes} crashes"
if [ "${FUZZ_KEEP_CORPUS:-}" = 1 ]; then
  echo "grown corpus kept in $WORK/corpus"
fi
if [ "$total_crashes" -ne 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/; replay with cargo fuzz run -s none <target> <file>)"
  exit 1
fi
