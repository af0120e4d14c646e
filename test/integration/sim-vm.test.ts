/**
 * Simulated VMs: the same guest driver and workload under the KVM-style memory
 * model (guest RAM shared by fd) and the Xen-style one (every frame mapped
 * explicitly before use) give identical pixels — and the native driver's.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Bar2, PV_MAGIC, encodeOps } from "../../src/abi/index.js";
import { NativeDriver, SoftwareGpu, desktopFrame, pngToFrame } from "../../src/gpu/index.js";
import { GuestDriver } from "../../src/guest/index.js";
import { type MemoryModel, SimVm } from "../../src/vmm/sim/vm.js";
import { ServeProcess } from "../support/serve-process.js";
import { quietLogger } from "../../src/base/index.js";

const quiet = quietLogger;
const MiB = 1 << 20;
let dir: string;
let serve: ServeProcess;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "mgpu-sim-"));
  serve = await ServeProcess.start(["mgpu-2q", "mgpu-2q"], dir);
});
after(async () => {
  await serve.stop();
  rmSync(dir, { recursive: true, force: true });
});

function boot(model: MemoryModel, socket: string): { vm: SimVm; driver: GuestDriver } {
  const vm = new SimVm({ name: model, ramSize: 64 * MiB, memoryModel: model, socket, logger: quiet });
  const driver = new GuestDriver(vm);
  driver.init(0xe0000000, { systemBatch: { gpa: 16 * MiB, bytes: vm.ramAt(16 * MiB, 4 * MiB) } });
  return { vm, driver };
}

test("the same workload gives identical pixels under the KVM-style and Xen-style memory models", async () => {
  const [kvmSocket, xenSocket] = serve.vgpus.map((v) => v.socket);
  const kvm = boot("kvm", kvmSocket!);
  const xen = boot("xen", xenSocket!);
  const frames: Uint8Array[] = [];
  for (const [i, { driver }] of [kvm, xen].entries()) {
    const w = desktopFrame(9);
    const s = driver.prepare(w, true);
    driver.execute(encodeOps(w.ops, s));
    driver.modeSet(s.screen!);
    frames.push(pngToFrame(await serve.screenshot(serve.vgpus[i]!.uuid)).rgba);
  }
  assert.deepEqual(frames[0], frames[1], "KVM-style and Xen-style render the same pixels");
  // And both match the native driver.
  const gpu = new SoftwareGpu({ localMemorySize: 64 * MiB, gttEntries: 16 << 10 });
  const drv = new NativeDriver(gpu, { size: 48 * MiB });
  const w = desktopFrame(9);
  const s = drv.prepare(w);
  drv.run(w, s);
  drv.modeSet(s.screen!);
  assert.deepEqual(frames[0], gpu.scanout().rgba);
  gpu.close();
  // The batches lived in guest RAM: the Xen-style device mapped frames one by one, the KVM-style one never had to.
  const stats = (await serve.request({ cmd: "stats" })).vgpus as { explicitFrameMaps: number }[];
  assert.equal(stats[0]!.explicitFrameMaps, 0);
  assert.ok(stats[1]!.explicitFrameMaps > 0, JSON.stringify(stats[1]));
  for (const { vm } of [kvm, xen]) vm.close();
});

test("a VM's vCPU reaches RAM and pass-through BARs directly and traps only on MMIO", () => {
  const vm = new SimVm({
    name: "probe",
    ramSize: 16 * MiB,
    memoryModel: "kvm",
    socket: serve.vgpus[0]!.socket,
    logger: quiet,
  });
  const driver = new GuestDriver(vm);
  driver.init(0xd0000000);
  vm.physWrite(0x1000, 4, 0xabcdef01);
  assert.equal(vm.physRead(0x1000, 4), 0xabcdef01);
  vm.physWrite(0xd0000000 + 64, 4, 0x12345678); // BAR0: pass-through
  assert.equal(vm.barMemory(0)![64], 0x78);
  const before = { ...vm.accesses };
  assert.equal(
    vm.physRead(0xd0000000 + 32 * MiB + Bar2.PV_INFO, 4),
    PV_MAGIC,
    "BAR2 sits after the 32 MiB BAR0: trapped",
  );
  assert.equal(vm.accesses.trapped, before.trapped + 1);
  assert.throws(() => vm.physRead(0x7000_0000, 4), RangeError);
  vm.close();
});
