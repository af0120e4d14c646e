/**
 * scripts/provision-guest.sh installs its own host prerequisites (issue 13):
 * run with a PATH that lacks debootstrap and chroot (they live in /usr/sbin)
 * and a fake apt-get that records its arguments and "installs" the missing
 * commands into a directory on that PATH. As root it must run `update` once,
 * then `install -y` the missing packages; as an unprivileged user it must exit
 * 1 and print the exact command to run. MGPU_PROVISION_CHECK_ONLY=1 stops the
 * script after this step, so no tree is built.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const script = join(
  dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "scripts",
  "provision-guest.sh",
);
const isRoot = process.getuid?.() === 0;

/** A fake apt-get: logs each call; `install` makes a stub of every command it was asked for. */
function fakeAptGet(dir: string, bin: string, log: string): string {
  const path = join(dir, "apt-get");
  writeFileSync(
    path,
    `#!/bin/sh
echo "$*" >> ${log}
if [ "$1" = install ]; then
  for pkg in "$@"; do
    case "$pkg" in
      debootstrap) printf '#!/bin/sh\\n' > ${bin}/debootstrap; chmod 755 ${bin}/debootstrap ;;
      coreutils) printf '#!/bin/sh\\n' > ${bin}/chroot; chmod 755 ${bin}/chroot ;;
    esac
  done
fi
`,
  );
  chmodSync(path, 0o755);
  return path;
}

function setUp() {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-provision-"));
  chmodSync(dir, 0o755);
  const bin = join(dir, "bin");
  mkdirSync(bin, { mode: 0o755 });
  const log = join(dir, "apt-get.log");
  const aptGet = fakeAptGet(dir, bin, log);
  const env = {
    // /usr/bin has sh, flock and unshare; debootstrap and chroot are in /usr/sbin, which is left out.
    PATH: `/usr/bin:${bin}`,
    MGPU_PROVISION_CHECK_ONLY: "1",
    MGPU_APT_GET: aptGet,
    MGPU_CACHE_DIR: join(dir, "cache"),
    HOME: dir,
  };
  return { dir, bin, log, env };
}

test("as root, provisioning installs the missing debootstrap with apt-get (update, then install -y)", (t) => {
  if (!isRoot) {
    if (process.env.CI === "true") assert.fail("CI runs as root; this test needs root");
    t.skip("needs root (the script installs packages only as root)");
    return;
  }
  const { dir, log, env } = setUp();
  try {
    const r = spawnSync("/usr/bin/bash", [script], { env, encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /installing host packages: debootstrap coreutils/);
    const calls = readFileSync(log, "utf8").trim().split("\n");
    assert.equal(calls.length, 2, calls.join("\n"));
    assert.match(calls[0]!, /^update\b/);
    assert.match(calls[1]!, /^install -y -q debootstrap coreutils$/);
    // Once installed, a second run finds everything and calls apt-get no more.
    const again = spawnSync("/usr/bin/bash", [script], { env, encoding: "utf8", timeout: 60_000 });
    assert.equal(again.status, 0, again.stderr);
    assert.equal(readFileSync(log, "utf8").trim().split("\n").length, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("as an unprivileged user, provisioning exits 1 and prints the exact apt-get command", (t) => {
  const setpriv = spawnSync("/usr/bin/setpriv", ["--version"]);
  if (isRoot && setpriv.status !== 0) {
    if (process.env.CI === "true") assert.fail("setpriv (util-linux) not found");
    t.skip("setpriv (util-linux) not found: cannot drop privileges");
    return;
  }
  const { dir, log, env } = setUp();
  try {
    // A copy the unprivileged user can read wherever the checkout lives (same bytes, same hash).
    const copy = join(dir, "provision-guest.sh");
    copyFileSync(script, copy);
    chmodSync(copy, 0o755);
    const argv = isRoot
      ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/bash", copy]
      : ["/usr/bin/bash", copy];
    const r = spawnSync(argv[0]!, argv.slice(1), { env, encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(
      r.stderr,
      /missing host packages: debootstrap coreutils; run as root: apt-get update && apt-get install -y debootstrap coreutils/,
    );
    assert.throws(() => readFileSync(log), "apt-get was not called");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
