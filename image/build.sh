#!/usr/bin/env bash
# Build the cachefs container image WITHOUT a Docker engine (`make image`), the same image that
# image/Dockerfile describes: a Debian 12 (bookworm) rootfs made by debootstrap from Debian's
# packages, a builder copy of it that compiles the cachefs wheel (with its native extension) and its
# dependencies into the venv /opt/cachefs, and a runtime copy that receives that venv. The runtime
# rootfs is packed into an OCI image layout by image/oci.py (one layer, reproducible order, uid/gid
# kept) and, when skopeo is installed, checked and also written as a docker-archive.
#
# Outputs (under $OUT, default build/image):
#   rootfs/                       the runtime rootfs (what the image holds)
#   oci/                          OCI image layout, tag = the package version
#   cachefs-VERSION.oci.tar       that layout as one tar (`docker load`, `podman load`, skopeo)
#   cachefs-VERSION.docker.tar    docker-archive for older Docker (needs skopeo)
#
# Needs root (debootstrap, chroot), debootstrap, and network to Debian's archive and PyPI.
# The debootstrap result is cached in $OUT/cache/, keyed by the suite and the package list, so a
# second build only redoes the wheel (about a minute instead of several).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

OUT=${OUT:-build/image}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
IMAGE_NAME=${IMAGE_NAME:-ghcr.io/cachefs/cachefs}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
TAG=${TAG:-$VERSION}
# Keep these three lists the same as image/Dockerfile (tests/csi/test_image.py checks that).
RUNTIME_PKGS="python3 fuse3 libfuse3-3 libxxhash0 libcurl4 tini ca-certificates"
BUILD_PKGS="python3-venv python3-dev gcc libc6-dev pkg-config libfuse3-dev libxxhash-dev libcurl4-openssl-dev"
IMAGE_UID=65532    # the image's default user; the node plugin's containers run as root (see the chart)

log() { echo "image: $*" >&2; }
die() { echo "image: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
command -v skopeo >/dev/null || {
  log "installing skopeo (checks the layout, writes the docker-archive, pushes)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null 2>&1 \
    || log "skopeo not available: skipping the docker-archive"
}

mkdir -p "$OUT/cache"
OUT=$(cd "$OUT" && pwd)

# Unmount whatever a chroot step bound, also when a step fails.
BOUND=()
cleanup() {
  for ((i=${#BOUND[@]}-1; i>=0; i--)); do umount -l "${BOUND[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind_for_chroot() {   # /proc, /dev, /sys and DNS for apt-get and pip inside a rootfs
  local root=$1
  for d in proc dev sys; do
    mkdir -p "$root/$d"
    mount --bind "/$d" "$root/$d"; BOUND+=("$root/$d")
  done
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}
unbind_chroot() {
  local root=$1 keep=()
  for m in "${BOUND[@]}"; do
    if [[ $m == "$root"/* ]]; then umount -l "$m"; else keep+=("$m"); fi
  done
  BOUND=("${keep[@]+"${keep[@]}"}")
  rm -f "$root/etc/resolv.conf"
}
# The builder trusts what the build host trusts (a TLS-inspecting proxy's CA, say): pip inside it
# reaches PyPI through the same network. Only the builder: the runtime image keeps Debian's CAs.
HOST_CA=${HOST_CA:-$(for f in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  [ -n "$f" ] && [ -f "$f" ] && { echo "$f"; break; }; done)}
in_chroot() { local root=$1; shift; chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive ${CHROOT_ENV:-} "$@"; }

# ---- 1. base rootfs: debootstrap (cached)
key=$(printf '%s %s %s' "$SUITE" "$MIRROR" "$RUNTIME_PKGS" | sha256sum | cut -c1-16)
base_tar="$OUT/cache/debootstrap-$SUITE-$key.tar"
if [ ! -f "$base_tar" ]; then
  log "debootstrap $SUITE (minbase + ${RUNTIME_PKGS// /,}); a few minutes"
  tmp="$OUT/cache/debootstrap.tmp"
  rm -rf "$tmp"
  debootstrap --variant=minbase --include="${RUNTIME_PKGS// /,}" "$SUITE" "$tmp" "$MIRROR" \
    > "$OUT/cache/debootstrap.log" 2>&1 || { tail -20 "$OUT/cache/debootstrap.log"; die "debootstrap failed"; }
  # What debian:12-slim adds: security and point-release updates, no docs/man pages/locales.
  cat > "$tmp/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
  cat > "$tmp/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  bind_for_chroot "$tmp"
  in_chroot "$tmp" apt-get update -qq
  in_chroot "$tmp" apt-get -y -qq upgrade >/dev/null
  unbind_chroot "$tmp"
  tar -C "$tmp" -cf "$base_tar.part" . && mv "$base_tar.part" "$base_tar"
  rm -rf "$tmp"
else
  log "base rootfs from cache ($base_tar)"
fi

fresh_rootfs() { rm -rf "$1"; mkdir -p "$1"; tar -C "$1" -xf "$base_tar"; }

# ---- 2. builder: compile the wheel (native extension included) and install it into /opt/cachefs
BUILDER="$OUT/builder"
fresh_rootfs "$BUILDER"
bind_for_chroot "$BUILDER"
log "builder: installing ${BUILD_PKGS}"
in_chroot "$BUILDER" apt-get install -y -qq --no-install-recommends $BUILD_PKGS >/dev/null
if [ -n "$HOST_CA" ]; then
  cp "$HOST_CA" "$BUILDER/etc/ssl/build-host-ca.crt"
  CHROOT_ENV="PIP_CERT=/etc/ssl/build-host-ca.crt SSL_CERT_FILE=/etc/ssl/build-host-ca.crt"
fi
log "builder: copying the source tree (tracked and new files, not ignored ones)"
mkdir -p "$BUILDER/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf - | tar -C "$BUILDER/src" -xf -
log "builder: building the wheel and the venv /opt/cachefs"
in_chroot "$BUILDER" python3 -m venv /opt/cachefs
in_chroot "$BUILDER" /opt/cachefs/bin/pip install -q --no-cache-dir --upgrade pip
in_chroot "$BUILDER" /opt/cachefs/bin/pip wheel -q --no-cache-dir --no-deps -w /wheels /src
in_chroot "$BUILDER" sh -c '/opt/cachefs/bin/pip install -q --no-cache-dir /wheels/cachefs-*.whl'
in_chroot "$BUILDER" /opt/cachefs/bin/python -c \
  'import cachefs.native as n, cachefs.csi.proto; assert n.ACTIVE == "native", "native block reader not built"'
unbind_chroot "$BUILDER"
CHROOT_ENV=

# ---- 3. runtime rootfs: the base, the venv, a non-root default user
ROOTFS="$OUT/rootfs"
fresh_rootfs "$ROOTFS"
cp -a "$BUILDER/opt/cachefs" "$ROOTFS/opt/"
cp "$BUILDER"/wheels/cachefs-*.whl "$OUT/"
chroot "$ROOTFS" /usr/sbin/useradd -K SYS_UID_MAX=65534 -K SYS_GID_MAX=65534 --system --uid "$IMAGE_UID" --user-group --home-dir /nonexistent \
  --no-create-home --shell /usr/sbin/nologin cachefs
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/root/.cache
: > "$ROOTFS/etc/resolv.conf"          # the runtime writes its own
rm -rf "$BUILDER"

# ---- 4. pack: OCI layout (+ tarball, + docker-archive)
log "packing the OCI image $IMAGE_NAME:$TAG"
python3 image/oci.py pack "$ROOTFS" "$OUT/oci" --tag "$TAG" --name "$IMAGE_NAME" \
  --config image/config.json --version "$VERSION" --revision "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
tar -C "$OUT/oci" -cf "$OUT/cachefs-$TAG.oci.tar" oci-layout index.json blobs
if command -v skopeo >/dev/null; then
  skopeo inspect "oci:$OUT/oci:$TAG" > "$OUT/inspect.json"
  rm -f "$OUT/cachefs-$TAG.docker.tar"
  skopeo copy -q "oci:$OUT/oci:$TAG" "docker-archive:$OUT/cachefs-$TAG.docker.tar:$IMAGE_NAME:$TAG"
fi
du -sh "$ROOTFS" "$OUT/cachefs-$TAG.oci.tar" | sed 's/^/image: /' >&2
log "done: $OUT/oci ($IMAGE_NAME:$TAG); check it with: make image-test"
