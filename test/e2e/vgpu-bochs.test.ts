/**
 * A vGPU from `mgpu serve` under the real QEMU: the stock Linux bochs DRM
 * driver binds to it, the guest draws a known pattern into /dev/fb0, and the
 * host's PNG of that vGPU shows it — while the server counts no trapped access
 * to BAR0 (the framebuffer is passed through).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { pngToFrame } from "../../src/gpu/index.js";
import { ServeProcess } from "../support/serve-process.js";
import { bootGuest, requireGuestTree, sharedMemory, vfioUserDevice } from "./guest.js";

const row = (b: number, g: number, r: number) =>
  `i=0; while [ $i -lt 1024 ]; do printf '\\${b.toString(8)}\\${g.toString(8)}\\${r.toString(8)}\\000'; i=$((i+1)); done`;

test("the stock bochs DRM driver drives a vGPU; the host's PNG shows what the guest drew", async (t) => {
  const tree = requireGuestTree(t);
  if (!tree) return;
  const dir = join(tree, "run", `mgpu-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const uuid = "0b0c5000-0000-4000-8000-000000000001";
  const serve = await ServeProcess.start([`mgpu-2q:${uuid}`], dir);
  try {
    const socketInGuest = serve.vgpus[0]!.socket.slice(tree.length);
    let shot: Record<string, unknown> | undefined;
    let stats: Record<string, unknown> | undefined;
    let asked = false;
    let seen = "";
    const r = await bootGuest({
      tree,
      memoryMiB: 256,
      modules: [
        "drm",
        "drm_kms_helper",
        "ttm",
        "drm_ttm_helper",
        "drm_vram_helper",
        "drm_shmem_helper",
        "bochs",
      ],
      qemuArgs: [...sharedMemory(256), ...vfioUserDevice(socketInGuest)],
      script: [
        "for m in drm drm_kms_helper ttm drm_ttm_helper drm_vram_helper drm_shmem_helper bochs; do [ -f /modules/$m.ko ] && insmod /modules/$m.ko 2>/dev/null; done",
        "sleep 1",
        "dmesg | grep -iE 'bochs|drm' | head -20",
        "[ -e /dev/dri/card0 ] && echo CARD0=yes",
        "[ -e /dev/fb0 ] && echo FB0=yes",
        "echo FB_SIZE=$(cat /sys/class/graphics/fb0/virtual_size)",
        "echo FB_STRIDE=$(cat /sys/class/graphics/fb0/stride)",
        `(${row(0, 0, 255)}) > /tmp/red`,
        `(${row(0, 255, 0)}) > /tmp/green`,
        "for i in $(seq 100); do cat /tmp/red; done > /tmp/top",
        "for i in $(seq 100); do cat /tmp/green; done > /tmp/bottom",
        "cat /tmp/top /tmp/bottom > /dev/fb0",
        "sleep 1",
        "echo DRAWN=yes",
        "sleep 4",
      ].join("\n"),
      timeoutMs: 180_000,
      onOutput: (text) => {
        // The marker can arrive split across chunks: look at everything printed so far.
        seen += text;
        if (!asked && seen.includes("DRAWN=yes")) {
          asked = true;
          void serve.request({ cmd: "screenshot", uuid }).then((x) => (shot = x));
          void serve.request({ cmd: "stats" }).then((x) => (stats = x));
        }
      },
    });
    const context = `${r.output.slice(-4000)}\nserver:\n${serve.stderr.slice(-2000)}`;
    assert.equal(r.timedOut, false, context);
    assert.match(r.output, /Found bochs VGA, ID 0xb0c5/, context);
    assert.match(r.output, /Initialized bochs-drm/, context);
    assert.equal(r.values.FB0, "yes", context);
    assert.ok(shot && stats, `no screenshot/stats answer: ${context}`);
    assert.equal(typeof shot.png, "string", JSON.stringify(shot).slice(0, 200));
    const frame = pngToFrame(Buffer.from(shot.png as string, "base64"));
    const stride = Number(r.values.FB_STRIDE);
    assert.equal(stride, 4096, "1024 pixels of 32 bpp per line");
    const px = (x: number, y: number) =>
      Array.from(frame.rgba.subarray((y * frame.width + x) * 4, (y * frame.width + x) * 4 + 3));
    assert.deepEqual(px(10, 10), [255, 0, 0], "red band at the top");
    assert.deepEqual(px(1000, 99), [255, 0, 0]);
    assert.deepEqual(px(500, 150), [0, 255, 0], "green band below");
    assert.deepEqual(px(500, 199), [0, 255, 0]);
    const v = (stats.vgpus as { regionReads: number[]; regionWrites: number[] }[])[0]!;
    assert.equal(v.regionReads[0], 0, "no REGION_READ on BAR0: it is passed through");
    assert.equal(v.regionWrites[0], 0, "no REGION_WRITE on BAR0");
    assert.ok(v.regionWrites[2]! > 0, "BAR2 (DISPI) accesses are trapped");
  } finally {
    await serve.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
