#!/usr/bin/env bash
# Installs what building fluxgate and following the README walkthrough need on Debian/Ubuntu,
# skipping what is already there: a C toolchain and make (bundled librdkafka and SQLite),
# curl, jq and mosquitto-clients for the walkthrough, Java + Maven for the test services, and
# Python 3.11 (venv) + Node.js (npm) for the compatibility suite. The Rust toolchain itself comes
# from rustup.
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v make >/dev/null || need+=(make)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
# scripts/services (real Kafka and Cassandra for the tests) run on Java 17 and fetch with Maven.
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
# compat/ (real third-party MQTT clients): Python 3.11 with venv, Node.js with npm.
command -v python3.11 >/dev/null || need+=(python3.11)
python3.11 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3.11-venv)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -eq 0 ]; then
  echo "prerequisites present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
