/**
 * The guest harness itself, checked against QEMU's own devices (no project code):
 * if these fail, a failing end-to-end test of the project says nothing.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { BOCHS_MODULES, bootGuest, parseScriptOutput, requireGuestTree } from "./guest.js";

// Under TCG on two shared cores a boot takes ~3-6 s; allow for a loaded machine.
const BOOT_TIMEOUT_MS = 120_000;
const tail = (s: string) => s.slice(-3000);

test("the script's KEY=value lines and status are read between the markers only", () => {
  const out =
    "X=before\r\nMGPU-SCRIPT-BEGIN\r\nA=1\r\n[ 1.0] K=noise\r\nB=x=y\r\nMGPU-SCRIPT-END status=3\r\nC=after\r\n";
  assert.deepEqual(parseScriptOutput(out), { values: { A: "1", B: "x=y" }, scriptStatus: 3 });
  assert.deepEqual(parseScriptOutput("MGPU-SCRIPT-BEGIN\nA=1\n"), {
    values: { A: "1" },
    scriptStatus: undefined,
  });
});

test("the tree's QEMU has the vfio-user-pci device", (t) => {
  const tree = requireGuestTree(t);
  if (!tree) return;
  const devices = execFileSync("chroot", [tree, "qemu-system-x86_64", "-device", "help"], {
    encoding: "utf8",
  });
  assert.match(devices, /"vfio-user-pci"/);
});

test("a guest boots, runs its script and powers off", { timeout: BOOT_TIMEOUT_MS + 10_000 }, async (t) => {
  const tree = requireGuestTree(t);
  if (!tree) return;
  const r = await bootGuest({
    tree,
    script: "cat /proc/cpuinfo | head -1\necho KERNEL=$(uname -r)\necho MARK=ok\nexit 7",
    timeoutMs: BOOT_TIMEOUT_MS,
  });
  t.diagnostic(`boot took ${r.durationMs} ms`);
  assert.equal(r.timedOut, false, tail(r.output));
  assert.equal(r.values.MARK, "ok", tail(r.output));
  assert.match(r.output, /^processor\s*: 0/m);
  assert.match(r.values.KERNEL ?? "", /^6\./);
  assert.equal(r.scriptStatus, 7, "the script's exit status comes back; init still powers off");
  assert.equal(r.exitCode, 0, tail(r.output));
  assert.deepEqual(leftovers(tree), [], "the boot's initramfs is removed from the tree");
});

test(
  "reference: the stock bochs DRM driver binds QEMU's own bochs-display",
  { timeout: BOOT_TIMEOUT_MS + 10_000 },
  async (t) => {
    const tree = requireGuestTree(t);
    if (!tree) return;
    const r = await bootGuest({
      tree,
      modules: BOCHS_MODULES,
      script: [
        "load_modules",
        "dmesg | grep -iE 'bochs|drm'",
        "[ -e /dev/fb0 ] && echo FB0=yes",
        "[ -e /dev/dri/card0 ] && echo CARD0=yes",
      ].join("\n"),
      qemuArgs: ["-device", "bochs-display"],
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    t.diagnostic(`boot took ${r.durationMs} ms`);
    assert.equal(r.timedOut, false, tail(r.output));
    assert.equal(r.values.INSMOD_FAILED, undefined, tail(r.output));
    assert.match(r.output, /Found bochs VGA, ID 0xb0c5/, tail(r.output));
    assert.match(r.output, /Initialized bochs-drm/, tail(r.output));
    assert.equal(r.values.FB0, "yes", tail(r.output));
    assert.equal(r.values.CARD0, "yes", tail(r.output));
  },
);

test(
  "a guest that never finishes is killed at the timeout and leaves nothing behind",
  { timeout: 60_000 },
  async (t) => {
    const tree = requireGuestTree(t);
    if (!tree) return;
    const r = await bootGuest({ tree, script: "echo STARTED=yes\nsleep 600", timeoutMs: 15_000 });
    assert.equal(r.timedOut, true);
    assert.equal(r.exitCode, null, "killed, not exited");
    assert.equal(r.scriptStatus, undefined);
    assert.deepEqual(leftovers(tree), []);
    // No QEMU of ours survives the kill (chroot's pid was the group leader).
    const ps = execFileSync("ps", ["-eo", "args"], { encoding: "utf8" });
    assert.doesNotMatch(ps, new RegExp(`mgpu-initrd-${process.pid}-`));
  },
);

/** This process's initramfs files still in the tree. */
function leftovers(tree: string): string[] {
  return readdirSync(join(tree, "tmp")).filter((f) => f.startsWith(`mgpu-initrd-${process.pid}-`));
}
