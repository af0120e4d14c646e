/**
 * Two vGPUs on one parent, each driven by the guest driver through the
 * project's vfio-user client against `mgpu serve`: each renders its own
 * workload (pixel-identical to the native driver's rendering), and hostile GTT
 * entries, hostile command streams, privileged register writes and a hung
 * workload are contained: the other vGPU's memory checksum does not change and
 * it keeps rendering.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  EngineReg,
  GTT_VALID,
  MI_BATCH_BUFFER_END,
  PAGE_SIZE,
  type Workload,
  miBatchBufferStart,
  miLoadRegisterImm,
  xyColorBlt,
} from "../../src/abi/index.js";
import { NativeDriver, SoftwareGpu, desktopFrame, overlappingCopy, pngToFrame } from "../../src/gpu/index.js";
import { GuestDriver, GuestDriverError } from "../../src/guest/index.js";
import { ClientBus } from "../../src/vmm/client-bus.js";
import { Client } from "../../src/vfio-user/index.js";
import { Mapping, closeFd, createMemfd } from "../../src/sys/index.js";
import { ServeProcess } from "../support/serve-process.js";
import { quietLogger } from "../../src/base/index.js";

const quiet = { logger: quietLogger };
let dir: string;
let serve: ServeProcess;
const A = "aaaaaaaa-0000-4000-8000-000000000001";
const B = "bbbbbbbb-0000-4000-8000-000000000002";

function attach(uuid: string): { client: Client; bus: ClientBus; driver: GuestDriver } {
  const socket = serve.vgpus.find((v) => v.uuid === uuid)!.socket;
  const client = Client.connect(socket, quiet);
  const bus = new ClientBus(client);
  const driver = new GuestDriver(bus);
  driver.init();
  return { client, bus, driver };
}

async function checksum(uuid: string): Promise<string> {
  return (await serve.request({ cmd: "checksum", uuid })).sha256 as string;
}

async function screenshot(uuid: string): Promise<Uint8Array> {
  return pngToFrame(await serve.screenshot(uuid)).rgba;
}

/** The same workload on a private parent GPU through the native driver. */
function nativeRendering(w: Workload): Uint8Array {
  const gpu = new SoftwareGpu({ localMemorySize: 64 << 20, gttEntries: 16 << 10 });
  const drv = new NativeDriver(gpu, { size: 48 << 20 });
  const s = drv.prepare(w);
  drv.run(w, s);
  drv.modeSet(s[w.output]!);
  const rgba = gpu.scanout().rgba;
  gpu.close();
  return rgba;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "mgpu-mediator-"));
  serve = await ServeProcess.start([`mgpu-1q:${A}`, `mgpu-2q:${B}`], dir, ["--watchdog-ms", "100"]);
});
after(async () => {
  await serve.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("two vGPUs render their own workloads, pixel-identical to the native driver", async () => {
  const a = attach(A);
  const b = attach(B);
  assert.notEqual(a.driver.partition.gmBase, b.driver.partition.gmBase);
  assert.notEqual(a.driver.partition.lmBase, b.driver.partition.lmBase);
  const wa = desktopFrame(11);
  const wb = desktopFrame(22);
  const sa = a.driver.prepare(wa, true);
  const sb = b.driver.prepare(wb, true);
  a.driver.run(wa, sa);
  b.driver.run(wb, sb);
  a.driver.modeSet(sa.screen!);
  b.driver.modeSet(sb.screen!);
  assert.ok(a.driver.interrupts > 0, "completion arrived as an MSI");
  assert.deepEqual(await screenshot(A), nativeRendering(wa));
  assert.deepEqual(await screenshot(B), nativeRendering(wb));
  // The framebuffer itself was written without traps: only BAR2 registers trap.
  const stats = (await serve.request({ cmd: "stats" })).vgpus as {
    uuid: string;
    regionReads: number[];
    regionWrites: number[];
  }[];
  for (const v of stats) assert.equal(v.regionReads[0]! + v.regionWrites[0]!, 0, "no BAR0 traps");
  for (const x of [a, b]) {
    x.bus.close();
    x.client.close();
  }
});

test("hostile GTT entries, command streams and register writes are contained", async () => {
  const a = attach(A);
  const b = attach(B);
  const wb = overlappingCopy();
  const sb = b.driver.prepare(wb);
  b.driver.run(wb, sb);
  const before = await checksum(B);
  const pa = a.driver.partition;
  const expectRejected = (what: string, dwords: number[]) => {
    assert.throws(
      () => a.driver.execute(dwords),
      (e: unknown) => e instanceof GuestDriverError && e.code === "EIO",
      what,
    );
    a.driver.recover();
  };

  // 1. GTT entries pointing at memory A does not own: B's slice, the host's reserve.
  const spare = pa.gmSize / PAGE_SIZE - 1;
  a.driver.writeGtt(spare, pa.lmBase + pa.lmSize, false);
  a.driver.writeGtt(spare - 1, 0, false);
  assert.equal(
    a.bus.mmioRead(2, pa.gttOffset + spare * 8, 4) & GTT_VALID,
    GTT_VALID,
    "the guest reads back what it wrote",
  );
  // ...but the engine cannot reach through them: a fill there faults on A only.
  expectRejected(
    "blit through a refused GTT entry",
    xyColorBlt(pa.gmBase + spare * PAGE_SIZE, 4096, { x: 0, y: 0, width: 1024, height: 1 }, 0xdeadbeef),
  );

  // 2. Command streams: outside the partition, privileged register, unknown opcode, runaway chain, deep nesting.
  expectRejected(
    "fill outside the partition",
    xyColorBlt(pa.gmBase + pa.gmSize, 4096, { x: 0, y: 0, width: 16, height: 16 }, 0x12345678),
  );
  expectRejected(
    "fill of another partition",
    xyColorBlt(b.driver.partition.gmBase, 4096, { x: 0, y: 0, width: 16, height: 16 }, 0),
  );
  expectRejected("privileged register write", miLoadRegisterImm([[EngineReg.RING_START, 0]]));
  expectRejected("unknown opcode", [0x3f << 23]);
  const loop = a.driver.alloc(PAGE_SIZE);
  const fb = a.bus.barMemory(0)!;
  new Uint32Array(fb.buffer, fb.byteOffset + (loop - pa.gmBase), 3).set(miBatchBufferStart(loop));
  expectRejected("a batch that chains to itself forever", miBatchBufferStart(loop));
  const nest = a.driver.alloc(PAGE_SIZE);
  new Uint32Array(fb.buffer, fb.byteOffset + (nest - pa.gmBase), 4).set([
    ...miBatchBufferStart(nest, true),
    MI_BATCH_BUFFER_END,
  ]);
  expectRejected("nesting past one level", miBatchBufferStart(nest, true));

  // 3. Privileged MMIO: writes past the GTT partition and to unknown registers change nothing.
  a.bus.mmioWrite(2, pa.gttOffset + (pa.gmSize / PAGE_SIZE) * 8, 4, 0xffffffff);
  a.bus.mmioWrite(2, 0x7f000, 4, 0xffffffff);
  assert.equal(a.bus.mmioRead(2, 0x7f000, 4), 0);

  // 4. A workload that runs past the watchdog is preempted; only A sees the hang.
  const big = a.driver.allocSurface(1024, 2048);
  const hog: number[] = [];
  for (let i = 0; i < 3000; i++)
    hog.push(...xyColorBlt(big.gma, big.pitch, { x: 0, y: 0, width: 1024, height: 2048 }, i));
  assert.throws(
    () => a.driver.execute(hog),
    (e: unknown) => e instanceof GuestDriverError && /0x200/.test(e.message),
    "hang",
  );
  a.driver.recover();

  // B's memory was never touched, and B (and A, after recovery) still render.
  assert.equal(await checksum(B), before, "B's memory checksum unchanged");
  b.driver.run(wb, sb);
  const wa = overlappingCopy();
  const sa = a.driver.prepare(wa);
  a.driver.run(wa, sa);
  a.driver.modeSet(sa.s!);
  assert.deepEqual(await screenshot(A), nativeRendering(wa), "A renders correctly after recovering");
  const stats = (await serve.request({ cmd: "stats" })).vgpus as {
    uuid: string;
    stats: { rejected: number; hangs: number; gttRejected: number };
  }[];
  const sA = stats.find((s) => s.uuid === A)!.stats;
  const sB = stats.find((s) => s.uuid === B)!.stats;
  assert.ok(sA.rejected >= 6 && sA.hangs === 1 && sA.gttRejected === 2, JSON.stringify(sA));
  assert.equal(sB.rejected + sB.hangs + sB.gttRejected, 0);
  for (const x of [a, b]) {
    x.bus.close();
    x.client.close();
  }
});

test("a GTT entry for a guest frame lets the engine write guest memory; an unmapped frame faults", async () => {
  const a = attach(A);
  const ram = createMemfd("guest-ram", 1 << 20);
  const view = Mapping.ofFd(ram, 1 << 20);
  a.client.dmaMap({ flags: 3, offset: 0n, address: 0x4000_0000n, size: 1n << 20n }, ram);
  const p = a.driver.partition;
  const index = p.gmSize / PAGE_SIZE - 4;
  a.driver.writeGtt(index, 0x4000_0000 + 0x3000, true);
  a.driver.execute(
    xyColorBlt(p.gmBase + index * PAGE_SIZE, 4096, { x: 0, y: 0, width: 1024, height: 1 }, 0xfeedc0de),
  );
  const words = new Uint32Array(view.buffer, 0x3000, 1024);
  assert.ok(
    words.every((w) => w === 0xfeedc0de),
    "the blit landed in the guest's page",
  );
  a.driver.writeGtt(index + 1, 0x7000_0000, true); // never DMA-mapped by the VMM
  assert.throws(
    () =>
      a.driver.execute(
        xyColorBlt(p.gmBase + (index + 1) * PAGE_SIZE, 4096, { x: 0, y: 0, width: 16, height: 1 }, 1),
      ),
    (e: unknown) => e instanceof GuestDriverError && e.code === "EIO",
  );
  a.driver.recover();
  view.unmap();
  closeFd(ram);
  a.bus.close();
  a.client.close();
});
