/**
 * The toolkit's sample device under the real QEMU and a real Linux guest: ids,
 * BARs, capabilities as the kernel reports them, config writes that stick and
 * read-only fields that do not, BAR access through /sys resource files, MSI-X
 * vectors allocated by the guest kernel (vfio-pci behind a vIOMMU), and a DMA
 * round trip ending in an MSI-X interrupt.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { startSampleServer } from "../support/server-process.js";
import { bootGuest, requireGuestTree, sharedMemory, socketPathInTree, vfioUserDevice } from "./guest.js";

const source = join(
  dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "test",
  "e2e",
  "guest-tools",
  "pcitool.c",
);

/** Builds the guest's helper (static, so the busybox initramfs can run it). */
function buildPcitool(t: { skip(reason: string): void }): string | undefined {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-pcitool-"));
  const out = join(dir, "pcitool");
  try {
    execFileSync("cc", ["-static", "-O2", "-o", out, source], { stdio: "pipe" });
    return out;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const reason = `cannot build the guest helper with a static libc: ${String(e).split("\n")[0]}`;
    if (process.env.CI === "true") throw new Error(reason, { cause: e });
    t.skip(reason);
    return undefined;
  }
}

test("a Linux guest drives the toolkit sample through QEMU: config, BARs, capabilities, MSI-X, DMA", async (t) => {
  const tree = requireGuestTree(t);
  if (!tree) return;
  const pcitool = buildPcitool(t);
  if (!pcitool) return;
  const sock = socketPathInTree(tree, "toolkit");
  const server = await startSampleServer({ socketPath: sock.hostPath });
  try {
    const r = await bootGuest({
      tree,
      memoryMiB: 256,
      append: "intel_iommu=on",
      files: { "/bin/pcitool": pcitool },
      modules: ["vfio", "vfio_iommu_type1", "irqbypass", "vfio-pci-core", "vfio-pci"],
      qemuArgs: [
        ...sharedMemory(256),
        "-device",
        "intel-iommu,caching-mode=on",
        ...vfioUserDevice(sock.guestPath),
      ],
      script: `
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor)" = "0x1234" ] && [ "$(cat $d/device)" = "0x4d53" ] && D=$d; done
echo SLOT=$(basename "$D")
echo CLASS=$(cat $D/class)
echo RES0=$(sed -n 1p $D/resource)
echo RES2=$(sed -n 3p $D/resource)
echo RESET_METHOD=$(cat $D/reset_method)
pcitool cfgw $D 0x4 2 0x6
echo COMMAND=$(pcitool cfgr $D 0x4 2)
pcitool cfgw $D 0x0 2 0xffff
echo VENDOR_AFTER_WRITE=$(pcitool cfgr $D 0x0 2)
echo CAPPTR=$(pcitool cfgr $D 0x34 1)
echo BAR_ID=$(pcitool barr $D/resource0 0)
pcitool barw $D/resource0 4 0xcafe1234
echo BAR_SCRATCH=$(pcitool barr $D/resource0 4)
pcitool barw $D/resource0 0 0
echo BAR_ID_AFTER_WRITE=$(pcitool barr $D/resource0 0)
for m in vfio vfio_iommu_type1 irqbypass vfio-pci-core vfio-pci; do insmod /modules/$m.ko || echo INSMOD_FAILED=$m; done
echo 1234 4d53 > /sys/bus/pci/drivers/vfio-pci/new_id
echo DRIVER=$(basename $(readlink $D/driver))
pcitool vfio /dev/vfio/$(basename $(readlink $D/iommu_group)) $(basename $D) 4
`,
      timeoutMs: 180_000,
    });
    const v = r.values;
    const context = `${r.output.slice(-3000)}\nserver log:\n${server.stderr().slice(-2000)}`;
    assert.equal(r.timedOut, false, context);
    assert.ok(v.SLOT, context);
    assert.equal(v.CLASS, "0xff0000");
    const size = (line: string | undefined) => {
      const [start, end] = (line ?? "0 0").split(" ").map((x) => BigInt(x));
      return start! > 0n ? end! - start! + 1n : 0n;
    };
    assert.equal(size(v.RES0), 0x1000n, "BAR0 assigned, 4 KiB");
    assert.equal(size(v.RES2), 0x100000n, "BAR2 assigned, 1 MiB");
    // The kernel found PM and the PCIe FLR capability in the chain.
    assert.equal(v.RESET_METHOD, "flr pm");
    assert.equal(v.CAPPTR, "0x40");
    assert.equal(v.COMMAND, "0x6", "a config write sticks");
    assert.equal(v.VENDOR_AFTER_WRITE, "0x1234", "a read-only field does not");
    assert.equal(v.BAR_ID, "0x4d475053");
    assert.equal(v.BAR_SCRATCH, "0xcafe1234", "written and read back through the resource file");
    assert.equal(v.BAR_ID_AFTER_WRITE, "0x4d475053");
    assert.equal(v.DRIVER, "vfio-pci", context);
    assert.equal(v.VFIO_ID, "0x4d475053");
    assert.equal(v.MSIX_ENABLED, "4", context);
    assert.equal(v.MSIX_VECTORS, "4", "the guest kernel allocated four MSI-X vectors");
    assert.equal(v.MSIX_IRQ, "1", "the doorbell's completion arrived as MSI-X vector 0");
    assert.equal(v.DMA_ERROR, "0");
    assert.equal(v.DMA, "ok", "the device wrote the pattern into guest memory");
  } finally {
    await server.stop();
  }
});
