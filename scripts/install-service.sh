#!/usr/bin/env bash
# Installs mgpu for the whole machine and its systemd unit:
#   sudo bash scripts/install-service.sh && sudo systemctl enable --now mediated-gpu
# - builds the checkout and links `mgpu` (and `mgpu-vgpu`, the single-vGPU
#   vfio-user backend) into $PREFIX/bin (default /usr/local),
# - the unit into /etc/systemd/system, the vfio-user backend description into
#   /usr/share/vfio-user (the spec's convention), the README into /usr/share/doc.
# DESTDIR=dir installs into a staging root instead (then nothing is built, linked
# or reloaded unless MGPU_INSTALL_BUILD=1): used by the project's own test.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
destdir="${DESTDIR:-}"
prefix="${PREFIX:-/usr/local}"

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
  echo "install-service: run as root: sudo bash scripts/install-service.sh" >&2
  exit 1
fi

if [ -z "$destdir" ] || [ "${MGPU_INSTALL_BUILD:-}" = 1 ]; then
  [ -d node_modules ] || npm ci
  npm run build --silent
fi

install -d -m 0755 "$destdir$prefix/bin" "$destdir/etc/systemd/system" "$destdir/usr/share/vfio-user" \
  "$destdir/usr/share/doc/mediated-gpu"
node=$(command -v node) || { echo "install-service: node not found" >&2; exit 1; }
for pair in mgpu:main mgpu-vgpu:vgpu; do
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$node" "$here/dist/src/cli/${pair#*:}.js" >"$destdir$prefix/bin/${pair%%:*}"
  chmod 0755 "$destdir$prefix/bin/${pair%%:*}"
done
sed "s|/usr/local/bin/|$prefix/bin/|" packaging/systemd/mediated-gpu.service \
  >"$destdir/etc/systemd/system/mediated-gpu.service"
chmod 0644 "$destdir/etc/systemd/system/mediated-gpu.service"
sed "s|/usr/local/bin/|$prefix/bin/|" packaging/vfio-user/mediated-gpu.json \
  >"$destdir/usr/share/vfio-user/50-mediated-gpu.json"
chmod 0644 "$destdir/usr/share/vfio-user/50-mediated-gpu.json"
install -m 0644 README.md "$destdir/usr/share/doc/mediated-gpu/README.md"

if [ -z "$destdir" ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; start it with: systemctl enable --now mediated-gpu" >&2
  else
    echo "installed; systemd is not running here: start the daemon with: mgpu --state-dir=/var/lib/mediated-gpu serve" >&2
  fi
fi
