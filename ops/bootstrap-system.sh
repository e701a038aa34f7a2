#!/usr/bin/env bash
# Installs the system packages the project needs, only where they are missing:
# Python >= 3.11 with venv, Java 17 and Maven (to fetch and run the Kafka broker) and Debian's
# redis-server. Idempotent: a second run installs nothing and prints nothing.
# Skips Redis when REDIS_URL points at a server the user already runs, and
# Java/Maven when KAFKA_BOOTSTRAP_SERVERS points at an existing cluster, unless
# ALL_SERVERS is set (the test suite starts servers of its own, whatever those say).
set -euo pipefail

need=()
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1 || ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  need+=(python3 python3-venv)
elif ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need+=(python3-venv)   # Debian splits venv/ensurepip out of python3
fi
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -n "${ALL_SERVERS:-}" ]; then
  command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || need+=(maven)
fi
if [ -z "${REDIS_URL:-}" ] || [ -n "${ALL_SERVERS:-}" ]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: missing ${need[*]} and no apt-get here; install them by hand," >&2
  echo "bootstrap: or set KAFKA_BOOTSTRAP_SERVERS / REDIS_URL to servers you run." >&2
  exit 1
fi
as_root=(env DEBIAN_FRONTEND=noninteractive)
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "bootstrap: need root or sudo to install ${need[*]}" >&2; exit 1; }
  as_root=(sudo -n "${as_root[@]}")  # (sudo would drop DEBIAN_FRONTEND; -n: fail, not prompt)
fi
echo "bootstrap: installing ${need[*]} with apt-get"
# Another apt (say, a second `make` starting at the same time) holds the lock: wait for it.
wait_lock=(-o DPkg::Lock::Timeout=300)
"${as_root[@]}" apt-get "${wait_lock[@]}" update -qq
"${as_root[@]}" apt-get "${wait_lock[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's package may start a redis-server service where an init system runs;
# the project starts its own on loopback, so a running system one is fine too.
echo "bootstrap: done"
