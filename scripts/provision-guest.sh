#!/usr/bin/env bash
# Provisions the end-to-end test tree: a Debian 13 (trixie) root holding QEMU from
# trixie-backports (>= 10.1, for the vfio-user-pci device), a guest kernel whose
# DRM drivers (bochs) are modules, a static busybox for the initramfs and xz to
# unpack modules. test/e2e/guest.ts runs QEMU with `chroot TREE`.
#
# Cached outside the repo at ${MGPU_CACHE_DIR:-$HOME/.cache/mediated-gpu}/guest-KEY,
# KEY being a hash of this script (it names every package, so editing it makes a
# new tree). Built in a temp dir beside it under a lock and renamed when complete,
# so concurrent runs build once and a killed run never leaves a half tree in use.
#
# Prints only the tree's path on stdout; logs go to stderr. Needs root (debootstrap,
# chroot). The Debian mirror is read from this machine's apt sources at run time
# (or MGPU_DEBIAN_MIRROR), so no host name lives in the repo.
set -euo pipefail

log() { echo "provision-guest: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# HOME may be unset in a bare CI environment: ask the password database then.
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${MGPU_CACHE_DIR:-$home/.cache/mediated-gpu}"
key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
tree="$cache/guest-$key"

# A complete tree (its marker is written last) is reused as is.
if [ -f "$tree/.complete" ] && [ "${MGPU_PROVISION_CHECK_ONLY:-}" != 1 ]; then
  echo "$tree"
  exit 0
fi

# Host prerequisites, as "command:debian-package". Missing ones are installed when
# we are root (one apt-get update, then apt-get install -y); otherwise we say the
# exact command to run. MGPU_PROVISION_CHECK_ONLY=1 stops after this step, and
# MGPU_APT_GET names the apt-get to call (both for the script's own test).
apt_get="${MGPU_APT_GET:-apt-get}"
prerequisites="debootstrap:debootstrap flock:util-linux unshare:util-linux chroot:coreutils"
missing=""
for pair in $prerequisites; do
  command -v "${pair%%:*}" >/dev/null || case " $missing " in *" ${pair#*:} "*) ;; *) missing="$missing ${pair#*:}" ;; esac
done
missing="${missing# }"
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    die "missing host packages: $missing; run as root: apt-get update && apt-get install -y $missing"
  fi
  log "installing host packages: $missing"
  DEBIAN_FRONTEND=noninteractive "$apt_get" update -q >&2 || die "apt-get update failed"
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive "$apt_get" install -y -q $missing >&2 || die "apt-get install -y $missing failed"
  for pair in $prerequisites; do
    command -v "${pair%%:*}" >/dev/null || die "${pair%%:*} still not found after installing ${pair#*:}"
  done
fi
[ "${MGPU_PROVISION_CHECK_ONLY:-}" != 1 ] || exit 0
[ "$(id -u)" = 0 ] || die "needs root to build $tree (debootstrap, chroot); run it as root once"

# The first https?://.../debian URI in this machine's apt sources (deb822 or one-line).
host_mirror() {
  {
    sed -nE 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr -s ' \t' '\n'
    sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
  } | grep -E '^https?://[^[:space:]]+/debian/?$' | head -n1 || true
}
mirror="${MGPU_DEBIAN_MIRROR:-$(host_mirror)}"
[ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list{,.d} (set MGPU_DEBIAN_MIRROR)"
mirror="${mirror%/}"

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
  log "another run is provisioning; waiting for it"
  flock 9
fi
if [ -f "$tree/.complete" ]; then # the other run finished it while we waited
  echo "$tree"
  exit 0
fi

# Unmounts whatever a failed debootstrap may have left mounted under a build dir
# (proc, sys), deepest first, then removes the dir without crossing into a mount.
discard() {
  local dir="$1" mnt
  awk -v p="$dir" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r mnt; do umount -l "$mnt" || true; done
  rm -rf --one-file-system "$dir"
}
# We hold the lock, so any other build dir belongs to a run that died.
for stale in "$cache"/.build-*; do
  [ -e "$stale" ] || continue
  log "removing a dead run's $stale"
  discard "$stale"
done

[ ! -e "$tree" ] || discard "$tree" # without its marker: not ours to trust
work=$(mktemp -d "$cache/.build-$key.XXXXXX")
chmod 755 "$work"
trap 'discard "$work"' EXIT
trap 'exit 130' INT TERM HUP # so that the EXIT trap runs
start=$(date +%s)

include=""
case "$mirror" in https:*) include="--include=ca-certificates" ;; esac
log "debootstrap --variant=minbase trixie (mirror from the host's apt sources)"
# In a mount namespace of its own: the proc and sys it mounts in the tree vanish
# with it, even if it is killed.
# shellcheck disable=SC2086
unshare --mount --propagation private debootstrap --variant=minbase $include trixie "$work" "$mirror" >&2
log "debootstrap took $(($(date +%s) - start)) s"

cat >"$work/etc/apt/sources.list" <<SOURCES
deb $mirror trixie main
deb $mirror trixie-backports main
SOURCES
# Documentation is never read in the tree: keep it out (about 30 MB).
cat >"$work/etc/dpkg/dpkg.cfg.d/01-mgpu-nodoc" <<'NODOC'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
NODOC
# Package scripts want /proc: it is mounted in a private mount namespace, which
# takes the mount away when the command ends. INITRD=No: the harness builds its
# own busybox initramfs, so the kernel's initramfs-tools hook would spend time
# and 40 MB on one nobody boots.
in_tree() {
  # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
  unshare --mount --propagation private sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' \
    "$work" env DEBIAN_FRONTEND=noninteractive INITRD=No LC_ALL=C "$@"
}
# Use-Pty=0: the tree has no /dev/pts.
apt_install() { in_tree apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "$@" >&2; }

in_tree apt-get update -q >&2
log "installing qemu-system-x86 from trixie-backports"
apt_install -t trixie-backports qemu-system-x86
log "installing linux-image-amd64 busybox-static xz-utils"
apt_install linux-image-amd64 busybox-static xz-utils
in_tree apt-get clean >&2
rm -rf "$work"/var/lib/apt/lists/* "$work"/boot/initrd.img-* "$work"/initrd.img "$work"/initrd.img.old
mkdir -p "$work/run" "$work/tmp"
chmod 1777 "$work/tmp"

# Check what the tests rely on before calling the tree complete.
qemu_version=$(chroot "$work" qemu-system-x86_64 --version | head -n1)
chroot "$work" qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
  die "the tree's QEMU has no vfio-user-pci device ($qemu_version)"
ls "$work"/boot/vmlinuz-* >/dev/null 2>&1 || die "no kernel in the tree's /boot"
find "$work/lib/modules" -name 'bochs.ko*' | grep -q . || die "no bochs DRM module in the tree's kernel"
[ -x "$work/bin/busybox" ] || die "no busybox in the tree"

{
  echo "built=$(date -u +%FT%TZ)"
  echo "seconds=$(($(date +%s) - start))"
  echo "qemu=$qemu_version"
  echo "kernel=$(ls "$work/lib/modules")"
} >"$work/.complete"
mv -T "$work" "$tree"
trap - EXIT
# Trees built by earlier versions of this script are never used again.
for old in "$cache"/guest-*; do
  [ "$old" = "$tree" ] || [ ! -d "$old" ] || { log "pruning $old"; discard "$old"; }
done
log "done in $(($(date +%s) - start)) s ($(du -sh "$tree" | cut -f1)): $tree"
echo "$tree"
