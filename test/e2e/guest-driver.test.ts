/**
 * The project's C guest driver (guest-driver/) in a real Linux guest under
 * QEMU: it binds to a vGPU served by `mgpu serve` through vfio-pci behind a
 * vIOMMU, finds its partition in the PV block, programs its GTT (local memory
 * for surfaces, IOMMU-mapped guest pages for ring and batches), renders every
 * workload of the suite through the ring, waits for completions on the MSI
 * eventfd and puts the desktop frame on the display. Every checksum and the
 * host's screenshot must equal the native driver's result pixel for pixel.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { pngToFrame, workloadSuite } from "../../src/gpu/index.js";
import { bootGuest } from "./guest.js";
import { differingPixels, nativeResults, vgpuGuest, vgpuTestBed, workloadKey } from "./guest-driver.js";
import { onHostWait } from "./host-line.js";

interface VgpuStatsReply {
  stats: { interrupts: number; traps: number; submissions: number; rejected: number };
  regionReads: number[];
  regionWrites: number[];
}

test("the C guest driver renders the workload suite in a Linux guest, pixel for pixel as the native driver", async (t) => {
  const uuid = "0c0de000-0000-4000-8000-000000000015";
  const bed = await vgpuTestBed(t, "g", [`mgpu-2q:${uuid}`]);
  if (!bed) return;
  const { serve } = bed;
  const line = bed.line("suite");
  try {
    const native = nativeResults();
    let shot: Record<string, unknown> | undefined;
    const r = await bootGuest(
      vgpuGuest({
        tree: bed.tree,
        build: bed.build,
        socket: bed.socket(uuid),
        line,
        script: "MGPU_MIN_SECONDS=0.1 mgputool suite $D /workloads.txt /dev/ttyS1",
        onOutput: onHostWait((label) => {
          if (label !== "scanout") return;
          void serve
            .request({ cmd: "screenshot", uuid })
            .then((x) => (shot = x))
            .finally(() => void line.send("go"));
        }),
      }),
    );
    const stats = (await serve.request({ cmd: "stats" })).vgpus as VgpuStatsReply[];
    const v = r.values;
    const context = `${r.output.slice(-5000)}\nserver:\n${serve.stderr.slice(-3000)}`;
    t.diagnostic(`guest run: ${(r.durationMs / 1000).toFixed(1)} s`);
    assert.equal(r.timedOut, false, context);
    assert.equal(v.DRIVER, "vfio-pci", context);
    assert.equal(v.BOUND, v.SLOT, context);
    assert.equal(v.LM_SIZE, String(32 << 20), "the PV block gave the mgpu-2q partition");
    assert.equal(v.SUITE_FAILURES, "0", context);

    // Every workload: the guest's checksum of its output is the native driver's.
    for (const n of native)
      assert.equal(v[`CRC_${workloadKey(n.name)}`], `0x${n.crc.toString(16).padStart(8, "0")}`, n.name);
    for (const w of workloadSuite()) {
      assert.match(v[`RUN_${workloadKey(w.name)}`] ?? "", /per_s=/, w.name);
      t.diagnostic(`${w.name}: ${v[`RUN_${workloadKey(w.name)}`]}`);
    }
    t.diagnostic(`trap latency: read ${v.TRAP_READ_US} µs, posted write ${v.TRAP_WRITE_US} µs`);

    // The desktop frame on the display, as the host's screenshot shows it.
    assert.equal(v.MODE_SET, "ok", context);
    assert.ok(shot, `no screenshot: ${context}`);
    assert.equal(typeof shot.png, "string", JSON.stringify(shot).slice(0, 200));
    const desktop = native.find((n) => n.name === "desktop-frame")!;
    const frame = pngToFrame(Buffer.from(shot.png as string, "base64"));
    assert.deepEqual([frame.width, frame.height], [desktop.width, desktop.height]);
    assert.equal(
      differingPixels(frame, desktop),
      0,
      "pixels of the screenshot that differ from the native frame",
    );

    // Interrupts arrive as MSI: the daemon injected them, the guest kernel took them, the driver woke on them.
    const host = stats[0]!;
    const guestIrqs = Number(v.GUEST_IRQS);
    const kernelMsi = Number(v.KERNEL_MSI);
    t.diagnostic(
      `MSIs: daemon injected ${host.stats.interrupts}, guest kernel ${kernelMsi}, driver ${guestIrqs}`,
    );
    assert.ok(guestIrqs > 0, "the driver woke on MSIs");
    assert.equal(kernelMsi, guestIrqs, "each MSI the kernel took reached the driver's eventfd");
    assert.ok(host.stats.interrupts >= kernelMsi, "no MSI the daemon did not send");
    assert.equal(host.stats.rejected, 0);
    assert.equal(host.regionWrites[0], 0, "BAR0 is passed through: no trapped access");
    assert.equal(host.regionReads[0], 0);
  } finally {
    await bed.close();
  }
});
