#!/usr/bin/env bash
# Prepare a Debian bookworm machine (CI or dev) for aceorch's Docker and
# browser test tiers. Idempotent; run as root:
#   bash deploy/ci_setup.sh
# - installs Debian packages (docker.io, debootstrap, chromium, ...) only when
#   missing, with a single `apt-get update` when something must be installed;
# - starts dockerd in the background when `docker info` does not answer and
#   waits (bounded) until it does.
# Reaches no network but Debian's package mirrors.
# Environment knobs:
#   ACEORCH_DOCKERD_LOG   (default /tmp/aceorch-dockerd.log)
#   ACEORCH_DOCKERD_PID   (default /tmp/aceorch-dockerd.pid)
#   ACEORCH_DOCKERD_WAIT  seconds to wait for dockerd (default 60)
set -euo pipefail

log() { printf '[ci_setup] %s\n' "$*"; }
die() { printf '[ci_setup] ERROR: %s\n' "$*" >&2; exit 1; }

DOCKERD_LOG=${ACEORCH_DOCKERD_LOG:-/tmp/aceorch-dockerd.log}
DOCKERD_PID=${ACEORCH_DOCKERD_PID:-/tmp/aceorch-dockerd.pid}
DOCKERD_WAIT=${ACEORCH_DOCKERD_WAIT:-60}

# Packages the test tiers need. Installed without recommends to stay small;
# fonts-liberation gives chromium screenshots readable Latin text.
PACKAGES=(docker.io docker-compose debootstrap chromium fonts-liberation iproute2 curl ca-certificates ffmpeg)

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, dockerd)"

t0=$SECONDS

# ---------------------------------------------------------------- packages
is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "packages: all present (${PACKAGES[*]})"
else
    export DEBIAN_FRONTEND=noninteractive
    log "packages: missing ${missing[*]}"
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/aceorch-apt-install.log 2>&1 \
        || { tail -n 30 /tmp/aceorch-apt-install.log >&2; die "apt-get install failed (log: /tmp/aceorch-apt-install.log)"; }
    for p in "${missing[@]}"; do
        is_installed "$p" || die "package $p still not installed"
    done
    log "packages: installed in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- dockerd
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

if docker_ok; then
    log "dockerd: already answering"
else
    command -v dockerd >/dev/null || die "dockerd not found after install"
    pid=""
    if [ -s "$DOCKERD_PID" ] && kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null; then
        pid=$(cat "$DOCKERD_PID")
        log "dockerd: pid $pid already started, waiting for it"
    elif pgrep -x dockerd >/dev/null 2>&1; then
        pid=$(pgrep -x dockerd | head -n 1)
        log "dockerd: found running pid $pid (not started by us), waiting for it"
    else
        # dockerd's own pidfile; a stale one from a killed daemon blocks startup.
        if [ -e /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid 2>/dev/null)" 2>/dev/null; then
            rm -f /var/run/docker.pid
        fi
        log "dockerd: starting (log $DOCKERD_LOG)"
        setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$DOCKERD_PID"
        log "dockerd: pid $pid (recorded in $DOCKERD_PID)"
    fi
    t1=$SECONDS
    until docker_ok; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd (pid $pid) exited; see $DOCKERD_LOG"
        fi
        if [ $((SECONDS - t1)) -ge "$DOCKERD_WAIT" ]; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_WAIT} s; see $DOCKERD_LOG"
        fi
        sleep 1
    done
    log "dockerd: answering after $((SECONDS - t1)) s"
fi

log "docker: client $(docker version -f '{{.Client.Version}}' 2>/dev/null), server $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
log "chromium: $(chromium --version 2>/dev/null || echo '?')"
log "done in $((SECONDS - t0)) s"
