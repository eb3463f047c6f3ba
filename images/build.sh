#!/usr/bin/env bash
# Build the pipeline's images on this machine, with no image registry: `make images`.
#
#   images/build.sh            Docker ready + base image + the CPU image + the CUDA image's system stage
#                              (+ push, when REGISTRY is set: `REGISTRY=us-docker.pkg.dev/PROJECT/privevo make images`)
#   images/build.sh docker     only make Docker ready (install it, start the daemon)
#   images/build.sh push       only push the images built here to $REGISTRY
#
# 1. Docker: installs the Debian packages docker.io and debootstrap when missing (root only)
#    and starts dockerd without its default bridge (--bridge=none --iptables=false) when no
#    daemon answers. Containers of this project run with network_mode "none".
# 2. Base image $BASE_IMAGE (Debian 12 + its Python 3.11): skipped when it exists; else
#    imported from the cached root file system $CACHE/debian-bookworm-py311.tar, which
#    debootstrap makes from the Debian mirror apt uses when it is missing.
# 3. The CPU image (images/Dockerfile.cpu) on that base, tagged as the config's
#    kubernetes.image (privevo-cpu:0.1.0: a local tag, which no cluster can pull), torch from a local wheel folder
#    ($WHEELS) served on loopback when it holds the CPU wheel, everything else from PyPI.
# 4. images/Dockerfile.cuda up to its `system` stage (before the CUDA torch), on the same
#    base: the part of the CUDA image that can be built without a CUDA base and a GPU.
# 5. With REGISTRY set: the CPU image, and the CUDA image ($GPU_IMAGE) where it was built here (images/README.md),
#    tagged $REGISTRY/NAME:TAG and pushed (`docker login` to it first); the digest each push got is recorded in
#    images/digests.json, and compiling a config whose kubernetes.image_registry is $REGISTRY pins that digest.
#
# Environment: BASE_IMAGE, TORCH_INDEX_PORT (default 18765), CACHE (default /var/cache/privevo), WHEELS (default /opt/wheels),
# DEBIAN_MIRROR (default: the first Debian URI in apt's sources), IMAGE and GPU_IMAGE (default: the
# config's kubernetes.image and gpu_image), REGISTRY (default: none, nothing is pushed), PYTHON (default .venv/bin/python, else python3), PIP_CA (the CA
# bundle pip trusts; default: pip's global.cert, else /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-privevo-base:bookworm-py311}
REGISTRY=${REGISTRY:-}
DIGESTS=images/digests.json
CACHE=${CACHE:-/var/cache/privevo}
WHEELS=${WHEELS:-/opt/wheels}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/privevo-dockerd.log}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

say() { echo "images: $*"; }
die() { echo "error: $*" >&2; exit 2; }

# ------------------------------------------------------------------------------ docker

docker_ready() {
    if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        [ "$(id -u)" = 0 ] || die "Docker is not installed: install docker.io and debootstrap (apt-get, as root)"
        say "installing docker.io and debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
    fi
    if docker info >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "no Docker daemon answers and only root can start one: start dockerd"
    say "starting dockerd --bridge=none --iptables=false (log: $DOCKERD_LOG)"
    # no default bridge and no iptables rules: containers get no network unless they ask for the host's
    setsid dockerd --bridge=none --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        sleep 0.5
    done
    die "dockerd did not start within 30 s: see $DOCKERD_LOG"
}

# BuildKit is needed (RUN --mount). A client with buildx uses it; Docker's own client before
# 23 has BuildKit built in (DOCKER_BUILDKIT=1); Debian's docker.io client is such a one.
build() {
    local client
    for client in docker /usr/bin/docker; do
        command -v "$client" >/dev/null || continue
        if "$client" buildx version >/dev/null 2>&1; then
            "$client" buildx build --load "$@"
            return
        fi
        local major
        major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
        if [ -n "$major" ] && [ "$major" -lt 23 ]; then
            DOCKER_BUILDKIT=1 "$client" build "$@"
            return
        fi
    done
    die "no Docker client with BuildKit: install docker-buildx (or Debian's docker.io)"
}

# ------------------------------------------------------------------------- base image

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -nE 's#^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?(https?://[^[:space:]]*/debian)/?([[:space:]].*)?$#\3#p' \
        | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE exists"
        return
    fi
    local tarball="$CACHE/debian-bookworm-py311.tar" started=$SECONDS
    mkdir -p "$CACHE"
    if [ ! -s "$tarball" ]; then
        local root mirror
        mirror=$(debian_mirror)
        root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        say "debootstrap bookworm from $mirror (Debian 12 + python3, python3-venv, ca-certificates)"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { rm -rf "$root"; die "debootstrap failed: see $CACHE/debootstrap.log"; }
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
        tar -C "$root" --numeric-owner -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$root"
    fi
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null
    say "base image $BASE_IMAGE made in $((SECONDS - started)) s (root file system cached in $tarball)"
}

# ------------------------------------------------------------------------ torch wheel

# A loopback package index over the CPU torch wheel of $WHEELS, when there is one.
TORCH_INDEX_URL=""
TORCH_INDEX_DIR=""
SERVER_PID=""
serve_torch_wheel() {
    local wheel
    wheel=$(find "$WHEELS" -maxdepth 1 -name 'torch-2.13.0+cpu-cp311-*.whl' 2>/dev/null | head -n1)
    [ -n "$wheel" ] || return 0
    local index port
    index=$(mktemp -d)
    TORCH_INDEX_DIR=$index  # global: the EXIT trap runs after this function's locals are gone
    mkdir -p "$index/simple/torch"
    ln -s "$wheel" "$index/simple/torch/"
    echo "<a href=\"$(basename "$wheel" | sed 's/+/%2B/')\">$(basename "$wheel")</a>" >"$index/simple/torch/index.html"
    # a fixed port keeps the build argument, and so Docker's layer cache, the same between builds
    port=${TORCH_INDEX_PORT:-18765}
    if ! "$PYTHON" -c "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
        port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$index" "$port" >/dev/null 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        "$PYTHON" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" 2>/dev/null && break
        sleep 0.1
    done
    trap 'if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi; rm -rf "$TORCH_INDEX_DIR"' EXIT
    TORCH_INDEX_URL="http://127.0.0.1:$port/simple"
    say "torch from $wheel (served on $TORCH_INDEX_URL)"
}

# ----------------------------------------------------------------------------- images

default_image() {
    "$PYTHON" -c "from privevo.config import KubernetesConfig; print(KubernetesConfig().$1)"
}

images() {
    local image started
    image=${IMAGE:-$(default_image image)}
    serve_torch_wheel
    local args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE")
    # the CA bundle pip trusts here (a TLS-inspecting proxy's CA included), as a build secret
    local ca=${PIP_CA:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}
    ca=${ca:-/etc/ssl/certs/ca-certificates.crt}
    [ ! -s "$ca" ] || args+=(--secret "id=pip-ca,src=$ca")
    [ -z "$TORCH_INDEX_URL" ] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    started=$SECONDS
    build "${args[@]}" -f images/Dockerfile.cpu -t "$image" .
    say "$image built in $((SECONDS - started)) s ($(docker image inspect --format '{{.Size}}' "$image" \
        | awk '{printf "%.0f MB", $1 / 1e6}'))"
    started=$SECONDS
    build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --target system \
        -f images/Dockerfile.cuda -t privevo-cuda-system:check .
    say "images/Dockerfile.cuda built up to its system stage in $((SECONDS - started)) s (the CUDA layers need a CUDA base)"
}

# ------------------------------------------------------------------------------- push

# Push one local image as $REGISTRY/IMAGE and record the digest the registry gave it in $DIGESTS.
push_one() {
    local image=$1 remote="${REGISTRY%/}/$1" repo digest
    docker tag "$image" "$remote"
    docker push "$remote" >/dev/null || die "docker push $remote failed: docker login to ${REGISTRY%%/*} first"
    repo=${remote%:*}
    [ "${remote##*/}" != "${repo##*/}" ] || repo=$remote  # a reference without a tag
    digest=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$remote" \
        | sed -n "s#^${repo}@##p" | head -n1)
    [ -n "$digest" ] || die "no digest recorded for $remote after the push"
    "$PYTHON" - "$DIGESTS" "$remote" "$digest" <<'PY'
import json, os, sys
path, reference, digest = sys.argv[1:]
digests = json.load(open(path)) if os.path.exists(path) else {}
digests[reference] = digest
with open(path + ".partial", "w") as handle:
    json.dump(digests, handle, indent=2, sort_keys=True)
    handle.write("\n")
os.replace(path + ".partial", path)
PY
    say "pushed $remote ($digest, recorded in $DIGESTS)"
}

push() {
    [ -n "$REGISTRY" ] || die "set REGISTRY to the registry to push to, e.g. REGISTRY=us-docker.pkg.dev/PROJECT/privevo"
    local image gpu_image
    image=${IMAGE:-$(default_image image)}
    gpu_image=${GPU_IMAGE:-$(default_image gpu_image)}
    docker image inspect "$image" >/dev/null 2>&1 || die "no image $image here: run images/build.sh first"
    push_one "$image"
    if docker image inspect "$gpu_image" >/dev/null 2>&1; then
        push_one "$gpu_image"
    else
        say "no $gpu_image here (it needs a CUDA base: images/README.md): not pushed, so GPU steps cannot pull it yet"
    fi
}

case "${1:-all}" in
    docker) docker_ready ;;
    push) push ;;
    all) docker_ready; base_image; images; [ -z "$REGISTRY" ] || push ;;
    *) die "usage: images/build.sh [docker|push]" ;;
esac
