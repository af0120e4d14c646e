#!/usr/bin/env bash
# Installs what the web tests look through, from Debian's packages: Chromium
# (driven by Playwright for the dashboard tests) and vncsnapshot (a real VNC
# client for the console test). As root it runs apt-get; otherwise it prints
# the command. Under CI=true a viewer that is still missing fails the run.
set -euo pipefail

declare -A wanted=([chromium]=/usr/bin/chromium [vncsnapshot]=/usr/bin/vncsnapshot)
missing=()
for pkg in "${!wanted[@]}"; do
  [ -x "${wanted[$pkg]}" ] || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (for the browser and VNC tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "note: the browser and VNC tests need: apt-get install -y --no-install-recommends ${missing[*]}" >&2
fi

for pkg in "${!wanted[@]}"; do
  if [ ! -x "${wanted[$pkg]}" ]; then
    if [ "${CI:-}" = "true" ]; then
      echo "${wanted[$pkg]} is missing; the web tests cannot run" >&2
      exit 1
    fi
    echo "note: no ${wanted[$pkg]}; the tests that need it will skip" >&2
  fi
done
