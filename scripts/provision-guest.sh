#!/usr/bin/env bash
# Provisions the end-to-end test tree: a Debian 13 (trixie) root with QEMU from
# trixie-backports (vfio-user-pci), a guest kernel with the bochs DRM module and
# a static busybox for the initramfs. Cached outside the repo, keyed by this
# script's content (it names every package), built atomically, reused.
# Prints the tree's path on stdout; everything else goes to stderr.
set -euo pipefail

cache="${MGPU_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mediated-gpu}"
key=$(sha256sum "$0" | cut -c1-16)
tree="$cache/guest-$key"
log() { echo "provision-guest: $*" >&2; }

if [ -f "$tree/.complete" ]; then
  echo "$tree"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "needs root (debootstrap, chroot); end-to-end tests need the tree at $tree"
  exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$tree/.complete" ]; then # another run finished it while we waited
  echo "$tree"
  exit 0
fi

# The Debian mirror is whatever this machine's apt already uses.
mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
  grep -oE 'https?://[^ ]+' | head -n1 || true)
[ -n "$mirror" ] || { log "no Debian mirror in this machine's apt sources"; exit 1; }

command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get update -qq >&2; apt-get install -y -qq debootstrap >&2; }

work="$cache/.build-$key-$$"
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "debootstrap trixie into $work (mirror from apt sources)"
debootstrap --variant=minbase trixie "$work" "$mirror" >&2

cat >"$work/etc/apt/sources.list" <<SOURCES
deb $mirror trixie main
deb $mirror trixie-backports main
SOURCES
chroot "$work" apt-get update -qq >&2
log "installing QEMU (trixie-backports), kernel, busybox"
chroot "$work" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -t trixie-backports qemu-system-x86 >&2
chroot "$work" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  linux-image-amd64 busybox-static xz-utils cpio >&2
chroot "$work" apt-get clean >&2
rm -rf "$work/var/lib/apt/lists"/*

chroot "$work" qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
  { log "QEMU in the tree has no vfio-user-pci device"; exit 1; }
date -u +%FT%TZ >"$work/.complete"
mv "$work" "$tree"
trap - EXIT
log "done in $(($(date +%s) - start)) s: $tree"
echo "$tree"
