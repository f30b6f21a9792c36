# shellcheck shell=bash
# Shared helpers for scripts/services/{kafka,cassandra}: sourced, not run.
#
# Cache (jars, once per machine): ${FLUXGATE_SERVICES_CACHE:-$HOME/.cache/fluxgate-services}
# Run state (config, data, logs, pid files): ${FLUXGATE_SERVICES_RUN:-/tmp/fluxgate-services}

# shellcheck disable=SC2034 # used by the scripts that source this file
SERVICES_CACHE="${FLUXGATE_SERVICES_CACHE:-$HOME/.cache/fluxgate-services}"
# shellcheck disable=SC2034
SERVICES_RUN="${FLUXGATE_SERVICES_RUN:-/tmp/fluxgate-services}"

log() { printf '[%s] %s\n' "$SERVICE_NAME" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# The major version of a java binary (8, 11, 17, 25 ...), or nothing.
java_major() {
  local v
  v="$("$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)" || true
  v="${v#1.}"
  printf '%s' "${v%%.*}"
}

# Picks a java whose major version is in [min, max]: $FLUXGATE_JAVA, then $JAVA_HOME,
# then `java` on PATH, then /usr/lib/jvm/*. Sets JAVA.
pick_java() {
  local min="$1" max="$2" c m
  local candidates=()
  [ -n "${FLUXGATE_JAVA:-}" ] && candidates+=("$FLUXGATE_JAVA")
  [ -n "${JAVA_HOME:-}" ] && candidates+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
  for c in /usr/lib/jvm/*/bin/java; do [ -x "$c" ] && candidates+=("$c"); done
  for c in "${candidates[@]}"; do
    [ -x "$c" ] || continue
    m="$(java_major "$c")"
    [ -n "$m" ] || continue
    if [ "$m" -ge "$min" ] && [ "$m" -le "$max" ]; then
      # shellcheck disable=SC2034 # read by the caller
      JAVA="$c"
      return 0
    fi
  done
  die "no Java between ${min} and ${max} found (set FLUXGATE_JAVA=/path/to/bin/java)"
}

# maven_fetch DEST_DIR POM_TEXT: resolves the runtime classpath of POM_TEXT from Maven
# Central into DEST_DIR/lib, once. DEST_DIR/.fetched marks a complete fetch and records
# the pom it came from; a later call with the same pom does nothing.
maven_fetch() {
  local dest="$1" pom="$2" tmp start
  if [ -f "$dest/.fetched" ] && [ -d "$dest/lib" ] && cmp -s "$dest/.fetched" <(printf '%s\n' "$pom"); then
    log "already fetched: $dest/lib ($(find "$dest/lib" -name '*.jar' | wc -l) jars)"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is needed to fetch the jars"
  mkdir -p "$dest"
  tmp="$(mktemp -d "$dest/.fetch.XXXXXX")"
  printf '%s\n' "$pom" >"$tmp/pom.xml"
  log "fetching the classpath from Maven Central into $dest/lib ..."
  start=$SECONDS
  if ! mvn -B -q -Dstyle.color=never -f "$tmp/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1; then
    tail -n 50 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "mvn copy-dependencies failed"
  fi
  rm -rf "${dest:?}/lib"
  mv "$tmp/lib" "$dest/lib"
  mv "$tmp/pom.xml" "$dest/pom.xml"
  rm -rf "$tmp"
  printf '%s\n' "$pom" >"$dest/.fetched"
  log "fetched $(find "$dest/lib" -name '*.jar' | wc -l) jars ($(du -sh "$dest/lib" | cut -f1)) in $((SECONDS - start)) s"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PIDFILE MARKER: prints the recorded PID and succeeds when that process is alive
# and its command line contains MARKER (so a recycled PID is never taken for ours).
pid_alive() {
  local pidfile="$1" marker="$2" pid
  [ -f "$pidfile" ] || return 1
  pid="$(tr -dc '0-9' <"$pidfile")"
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
  printf '%s' "$pid"
}

# launch PIDFILE LOGFILE CMD...: runs CMD detached (own session, stdin closed, output to
# LOGFILE); the PID written to PIDFILE is CMD's own (exec keeps it).
launch() {
  local pidfile="$1" logfile="$2"
  shift 2
  rm -f "$pidfile"
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$logfile" 2>&1 &
  local i
  for i in $(seq 1 50); do
    [ -s "$pidfile" ] && return 0
    sleep 0.1
  done
  die "process did not start (no pid in $pidfile; i=$i)"
}

# stop_pid PIDFILE MARKER: SIGTERM the recorded process, SIGKILL after STOP_TIMEOUT
# (default 20) seconds, remove the pid file.
stop_pid() {
  local pidfile="$1" marker="$2" pid i
  if ! pid="$(pid_alive "$pidfile" "$marker")"; then
    rm -f "$pidfile"
    log "not running"
    return 0
  fi
  log "stopping PID $pid ..."
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 $((${STOP_TIMEOUT:-20} * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after ${STOP_TIMEOUT:-20} s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
  log "stopped"
}

# fail_with_log LOGFILE MESSAGE: last 50 log lines, then exit 1.
fail_with_log() {
  log "---- last 50 lines of $1 ----"
  tail -n 50 "$1" >&2 || true
  log "----"
  die "$2"
}

rss_mb() {
  local kb
  kb="$(ps -o rss= -p "$1" 2>/dev/null | tr -d ' ')"
  [ -n "$kb" ] && printf '%s' "$((kb / 1024))"
}
