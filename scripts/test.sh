#!/usr/bin/env bash
# The README's test command. Builds, checks types, lint and format, provisions the
# guest tree for end-to-end tests (cached outside the repo), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

npm run build --silent
npx eslint .
npx prettier --check . >/dev/null || { npx prettier --check .; exit 1; }

# End-to-end tests need a Debian trixie tree with QEMU (vfio-user-pci) and a kernel.
if [ -z "${MGPU_GUEST_TREE:-}" ]; then
  if tree=$(bash scripts/provision-guest.sh); then
    export MGPU_GUEST_TREE="$tree"
  elif [ "${CI:-}" = "true" ]; then
    echo "provisioning the guest tree failed; end-to-end tests cannot run" >&2
    exit 1
  else
    echo "note: no guest tree (provisioning failed); end-to-end tests will skip" >&2
  fi
fi

# The guests' C tools (test/e2e/guest-tools, guest-driver/) are built static with the host's compiler.
if ! printf 'int main(void){return 0;}' | cc -static -x c -o /dev/null - 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev >&2 ||
      echo "note: could not install gcc and libc6-dev (static C builds for the guest tools)" >&2
  else
    echo "note: no static C toolchain; as root: apt-get install -y gcc libc6-dev" >&2
  fi
fi

# The dashboard and console tests look through Debian's Chromium and vncsnapshot.
bash scripts/install-viewers.sh

# Test files are named *.test.ts (a directory argument would make node run every
# file under test/, fixtures included).
if [ "$#" -eq 0 ]; then mapfile -t tests < <(find dist/src dist/test -name '*.test.js' | sort); set -- "${tests[@]}"; fi
node --test --test-concurrency=1 "$@"
