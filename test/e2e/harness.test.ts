/** The guest harness itself, checked against QEMU's own devices (no project code). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { bootGuest, guestTree } from "./guest.js";

test("the tree's QEMU has the vfio-user-pci device", (t) => {
  const tree = guestTree(t);
  if (!tree) return;
  const devices = execFileSync("chroot", [tree, "qemu-system-x86_64", "-device", "help"], {
    encoding: "utf8",
  });
  assert.match(devices, /"vfio-user-pci"/);
});

test("a guest boots, runs its script and powers off", async (t) => {
  const tree = guestTree(t);
  if (!tree) return;
  const r = await bootGuest({ tree, script: "echo KERNEL=$(uname -r)\necho MARK=ok", timeoutMs: 90_000 });
  assert.equal(r.timedOut, false, r.output.slice(-2000));
  assert.equal(r.values.MARK, "ok", r.output.slice(-2000));
  assert.match(r.values.KERNEL ?? "", /^6\./);
});

test("reference: the stock bochs DRM driver binds QEMU's own bochs-display", async (t) => {
  const tree = guestTree(t);
  if (!tree) return;
  const r = await bootGuest({
    tree,
    modules: ["drm", "drm_kms_helper", "ttm", "drm_ttm_helper", "drm_vram_helper", "bochs"],
    script: [
      "for m in drm drm_kms_helper ttm drm_ttm_helper drm_vram_helper bochs; do insmod /modules/$m.ko; done",
      "sleep 1",
      "dmesg | grep -i bochs",
      "[ -e /dev/fb0 ] && echo FB0=yes",
    ].join("\n"),
    qemuArgs: ["-device", "bochs-display"],
    timeoutMs: 120_000,
  });
  assert.equal(r.timedOut, false, r.output.slice(-3000));
  assert.match(r.output, /Initialized bochs-drm/);
  assert.equal(r.values.FB0, "yes", r.output.slice(-3000));
});
