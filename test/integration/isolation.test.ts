/**
 * Tenant isolation through the real daemon and sockets (issue 11): what a
 * hostile VMM can do with the fd it is handed, and what a hostile guest can do
 * to the shared engine and the daemon's loop. Every test asserts an outcome —
 * the victim's memory checksum, a bound, an error state — never a time.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  EngineStatus,
  MI_BATCH_BUFFER_END,
  MI_USER_INTERRUPT,
  PAGE_SIZE,
  Bar2,
  RingCtl,
  miBatchBufferStart,
  miLoadRegisterImm,
  miStoreDataImm,
  xyColorBlt,
  xySrcCopyBlt,
} from "../../src/abi/index.js";
import { GuestDriver, GuestDriverError } from "../../src/guest/index.js";
import { ClientBus } from "../../src/vmm/client-bus.js";
import { Client } from "../../src/vfio-user/index.js";
import {
  Mapping,
  SIZE_SEALS,
  SysError,
  closeFd,
  createMemfd,
  fdSize,
  memfdSeals,
  truncateFd,
} from "../../src/sys/index.js";
import { ServeProcess } from "../support/serve-process.js";

const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };
let dir: string;
let serve: ServeProcess;
const A = "aaaaaaaa-0000-4000-8000-00000000000a";
const B = "bbbbbbbb-0000-4000-8000-00000000000b";
/** The hostile tenant of the engine tests: the type with room for the widest blit twice. */
const H = "eeeeeeee-0000-4000-8000-00000000000e";
const MiB = 1 << 20;

interface Tenant {
  client: Client;
  bus: ClientBus;
  driver: GuestDriver;
  close(): void;
}

function attach(uuid: string): Tenant {
  const socket = serve.vgpus.find((v) => v.uuid === uuid)!.socket;
  const client = Client.connect(socket, quiet);
  const bus = new ClientBus(client);
  const driver = new GuestDriver(bus);
  driver.init();
  return {
    client,
    bus,
    driver,
    close() {
      bus.close();
      client.close();
    },
  };
}

async function checksum(uuid: string): Promise<string> {
  return (await serve.request({ cmd: "checksum", uuid })).sha256 as string;
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "mgpu-isolation-"));
  serve = await ServeProcess.start([`mgpu-1q:${A}`, `mgpu-1q:${B}`, `mgpu-2q:${H}`], dir, [
    "--watchdog-ms",
    "20000",
  ]);
});
after(async () => {
  await serve.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("a VMM's BAR0 fd holds only its own slice, sealed: remapping or truncating it reaches no one else", async () => {
  const a = attach(A);
  const b = attach(B);
  b.bus.barMemory(0)!.fill(0x5b);
  const victim = await checksum(B);

  const info = a.client.getRegionInfo(0);
  assert.ok(info.fd !== undefined, "BAR0 is mmappable");
  const fd = info.fd;
  const size = a.driver.partition.lmSize;
  assert.equal(info.offset, 0, "the slice starts at offset 0 of its own fd");
  assert.equal(info.size, size);
  assert.equal(fdSize(fd), size, "the fd is exactly the slice: nothing beyond it to map");
  assert.equal(memfdSeals(fd) & SIZE_SEALS, SIZE_SEALS, "shrink, grow and further seals are refused");

  // Map it at every offset a hostile VMM might try; all of it is A's own memory.
  const pattern = 0xa11ce000;
  for (const offset of [0, size / 2, size - PAGE_SIZE]) {
    const m = Mapping.ofFd(fd, size - offset, { offset });
    new Uint32Array(m.buffer).fill(pattern + offset / PAGE_SIZE);
    m.unmap();
  }
  // Truncating (which killed the daemon with SIGBUS) and growing are refused.
  for (const to of [0, size / 2, size * 2, 512 * MiB])
    assert.throws(
      () => truncateFd(fd, to),
      (e: unknown) => e instanceof SysError && e.code === "EPERM",
      `ftruncate to ${to}`,
    );
  assert.equal(fdSize(fd), size);

  // The daemon is alive, B is untouched, and A's slice is exactly what A wrote through its fd.
  assert.equal(await checksum(B), victim, "B's memory checksum unchanged");
  const expected = new Uint32Array(size / 4).fill(pattern);
  expected.fill(pattern + size / 2 / PAGE_SIZE, size / 8);
  expected.fill(pattern + (size - PAGE_SIZE) / PAGE_SIZE, (size - PAGE_SIZE) / 4);
  assert.equal(await checksum(A), sha256(new Uint8Array(expected.buffer)));
  closeFd(fd);
  a.close();
  b.close();
});

test("the shadow batch is out of every handed fd's reach: patching what the VMM can see runs nothing", async () => {
  const a = attach(A);
  const b = attach(B);
  // B's guest RAM, shared by fd (KVM style), one page of it in B's GTT.
  const ramSize = 1 * MiB;
  const ram = createMemfd("victim-ram", ramSize);
  const ramView = Mapping.ofFd(ram, ramSize);
  ramView.bytes.fill(0x42);
  b.client.dmaMap({ flags: 3, offset: 0n, address: 0x8000_0000n, size: BigInt(ramSize) }, ram);
  const pb = b.driver.partition;
  const victimIndex = pb.gmSize / PAGE_SIZE - 1;
  b.driver.writeGtt(victimIndex, 0x8000_0000 + 0x5000, true);
  const victimGma = pb.gmBase + victimIndex * PAGE_SIZE;
  const victimRam = sha256(ramView.bytes);

  // A's workload: long enough to be on the engine for many slices, then a store into A's own memory.
  const pa = a.driver.partition;
  const surface = a.driver.allocSurface(1024, 1024);
  const marker = a.driver.alloc(PAGE_SIZE);
  const batch = a.driver.alloc(PAGE_SIZE * 64);
  const cmds: number[] = [];
  for (let i = 0; i < 120; i++)
    cmds.push(...xyColorBlt(surface.gma, surface.pitch, { x: 0, y: 0, width: 1024, height: 1024 }, i));
  const store = miStoreDataImm(marker, 0x5afe0001);
  cmds.push(...store, MI_BATCH_BUFFER_END);
  const fb = a.bus.barMemory(0)!;
  const fbWords = new Uint32Array(fb.buffer, fb.byteOffset, fb.length / 4);
  fbWords.set(cmds, (batch - pa.gmBase) / 4);
  a.driver.submit(miBatchBufferStart(batch));

  // The hostile VMM maps everything its fd offers and rewrites every copy of the store it finds
  // (its own batch, and the shadow copy if it could reach it) to hit B's guest page instead.
  const info = a.client.getRegionInfo(0);
  const all = Mapping.ofFd(info.fd!, fdSize(info.fd!));
  const words = new Uint32Array(all.buffer);
  let patched = 0;
  for (let round = 0; round < 20; round++)
    for (
      let i = words.indexOf(store[0]!);
      i >= 0 && i + 3 < words.length;
      i = words.indexOf(store[0]!, i + 1)
    )
      if (words[i + 1] === store[1] && words[i + 3] === store[3]) {
        words[i + 1] = victimGma;
        words[i + 2] = 0;
        words[i + 3] = 0xbadbad01;
        patched++;
      }
  assert.ok(patched >= 1, "the VMM found the guest's own copy");
  try {
    a.driver.wait();
    const markerWord = new Uint32Array(fb.buffer, fb.byteOffset + (marker - pa.gmBase), 1)[0];
    assert.equal(markerWord, 0x5afe0001, "the scanned copy ran, not the patched one");
  } catch (e) {
    // A patch seen by the scanner is refused: outside A's partition.
    assert.ok(e instanceof GuestDriverError && e.code === "EIO", String(e));
    a.driver.recover();
  }
  assert.equal(sha256(ramView.bytes), victimRam, "B's guest RAM unchanged");
  assert.equal(new Uint32Array(ramView.buffer).indexOf(0xbadbad01), -1);
  all.unmap();
  closeFd(info.fd!);
  b.client.dmaUnmap(0x8000_0000n, BigInt(ramSize));
  ramView.unmap();
  closeFd(ram);
  a.close();
  b.close();
});

/** Writes `cmds` as a batch in the tenant's own memory and starts it, without waiting. */
function startBatch(t: Tenant, cmds: readonly number[]): void {
  const p = t.driver.partition;
  const batch = t.driver.alloc((cmds.length + 1) * 4);
  const fb = t.bus.barMemory(0)!;
  new Uint32Array(fb.buffer, fb.byteOffset + (batch - p.gmBase), cmds.length + 1).set([
    ...cmds,
    MI_BATCH_BUFFER_END,
  ]);
  t.driver.submit([...miBatchBufferStart(batch), MI_USER_INTERRUPT]);
}

interface EngineFigures {
  engine: { longestStepBytes: number; bands: number; blits: number };
  bandBytes: number;
  scheduler: { preemptions: number };
}
const engineFigures = async () => (await serve.request({ cmd: "stats" })) as unknown as EngineFigures;

test("the engine is preemptible: the widest blit runs in bands, and a victim's work runs in between", async () => {
  const h = attach(H);
  const v = attach(B);
  // 1. One XY_SRC_COPY_BLT of 16383 x 200 (13 MB): the largest a command can be within a partition.
  const src = h.driver.allocSurface(16383, 200);
  const dst = h.driver.allocSurface(16383, 200);
  const hb = h.bus.barMemory(0)!;
  const srcWords = new Uint32Array(
    hb.buffer,
    hb.byteOffset + (src.gma - h.driver.partition.gmBase),
    16383 * 200,
  );
  for (let i = 0; i < srcWords.length; i += 997) srcWords[i] = i;
  const copy = xySrcCopyBlt(
    dst.gma,
    dst.pitch,
    { x: 0, y: 0, width: 16383, height: 200 },
    src.gma,
    src.pitch,
    0,
    0,
  );
  const before = await engineFigures();
  h.driver.execute(copy);
  const dstWords = new Uint32Array(
    hb.buffer,
    hb.byteOffset + (dst.gma - h.driver.partition.gmBase),
    16383 * 200,
  );
  for (let i = 0; i < dstWords.length; i += 997) assert.equal(dstWords[i], i);
  const one = await engineFigures();
  assert.ok(one.engine.longestStepBytes <= one.bandBytes, `longest step ${one.engine.longestStepBytes} B`);
  assert.ok(
    one.engine.bands - before.engine.bands >= Math.floor((16383 * 4 * 200) / one.bandBytes),
    "the blit ran in bands",
  );

  // 2. Forty of them in one batch hold the engine for many slices; the victim's workloads still run.
  const victimSurface = v.driver.allocSurface(64, 64);
  startBatch(h, Array.from({ length: 40 }, () => copy).flat());
  const done: boolean[] = [];
  for (let i = 0; i < 5; i++) {
    v.driver.execute(
      xyColorBlt(victimSurface.gma, victimSurface.pitch, { x: 0, y: 0, width: 64, height: 64 }, i),
    );
    done.push((h.bus.mmioRead(2, Bar2.ENGINE_STATUS, 4) & EngineStatus.IDLE) === 0);
  }
  assert.ok(done[0], "the victim's first workload completed while the hostile one was still on the engine");
  h.driver.wait(60_000);
  const after = await engineFigures();
  assert.ok(after.scheduler.preemptions > before.scheduler.preemptions, "the hostile workload was preempted");
  assert.ok(after.engine.longestStepBytes <= after.bandBytes);
  h.close();
  v.close();
});

test("64 blits over guest pages run in bands too", async () => {
  const h = attach(H);
  const ramSize = 4 * MiB;
  const ram = createMemfd("hostile-ram", ramSize);
  h.client.dmaMap({ flags: 3, offset: 0n, address: 0x1_0000_0000n, size: BigInt(ramSize) }, ram);
  const p = h.driver.partition;
  // The upper half of the partition maps guest RAM pages (as the driver's system batches do).
  const first = p.lmSize / PAGE_SIZE;
  for (let i = 0; i < ramSize / PAGE_SIZE; i++)
    h.driver.writeGtt(first + i, 0x1_0000_0000 + i * PAGE_SIZE, true);
  const gma = p.gmBase + p.lmSize;
  const pitch = 16383 * 4;
  const rows = Math.floor(ramSize / 2 / pitch);
  const cmds: number[] = [];
  for (let i = 0; i < 64; i++)
    cmds.push(
      ...xySrcCopyBlt(
        gma + rows * pitch,
        pitch,
        { x: 0, y: 0, width: 16383, height: rows },
        gma,
        pitch,
        0,
        0,
      ),
    );
  const before = await engineFigures();
  h.driver.execute(cmds, 60_000);
  const after = await engineFigures();
  assert.ok(after.engine.longestStepBytes <= after.bandBytes);
  assert.ok(after.engine.bands - before.engine.bands >= 64 * Math.floor((rows * pitch) / after.bandBytes));
  h.client.dmaUnmap(0x1_0000_0000n, BigInt(ramSize));
  closeFd(ram);
  h.close();
});

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]) / 1024;
}

test("a flood of posted tail writes is held back: the daemon's memory stays bounded and the victim is answered", async (t) => {
  const h = attach(A);
  const v = attach(B);
  v.bus.barMemory(0)!.fill(0x3c);
  const victim = await checksum(B);
  // The worst submission a tenant's type allows: one batch start to 4 MiB of the longest command
  // (a 63-dword register load), the most one submission may flatten to.
  const lri = miLoadRegisterImm(
    Array.from({ length: 31 }, (_, i) => [Bar2.GPR0 + (i % 16) * 4, i] as [number, number]),
  );
  const count = Math.floor(((4 << 20) - 4) / (lri.length * 4));
  const p = h.driver.partition;
  const fb = h.bus.barMemory(0)!;
  const batch = h.driver.alloc((count * lri.length + 1) * 4);
  const bw = new Uint32Array(fb.buffer, fb.byteOffset + (batch - p.gmBase), count * lri.length + 1);
  for (let i = 0; i < count; i++) bw.set(lri, i * lri.length);
  bw[count * lri.length] = MI_BATCH_BUFFER_END;
  // A ring of batch starts of our own, then 100 posted tail writes: one submission of 4 MiB each.
  const ringBytes = 16 * PAGE_SIZE;
  const ring = h.driver.alloc(ringBytes);
  const rw = new Uint32Array(fb.buffer, fb.byteOffset + (ring - p.gmBase), ringBytes / 4);
  const start = miBatchBufferStart(batch);
  for (let i = 0; i + 3 <= rw.length; i += 3) rw.set(start, i);
  h.bus.mmioWrite(2, Bar2.RING_CTL, 4, 0);
  h.bus.mmioWrite(2, Bar2.RING_START, 4, ring);
  h.bus.mmioWrite(2, Bar2.RING_CTL, 4, RingCtl.encode(ringBytes / PAGE_SIZE));
  const pid = serve.child.pid!;
  const before = rssMiB(pid);
  const tail = new Uint8Array(4);
  for (let i = 1; i <= 100; i++) {
    new DataView(tail.buffer).setUint32(0, i * 12, true);
    h.client.regionWrite(2, Bar2.RING_TAIL, tail, { posted: true });
  }
  // The victim's read is answered (and correctly) while the flood is being worked off.
  assert.equal(v.bus.mmioRead(2, 0x800, 4), 0x5650474d, "the victim's PV block answers");
  const status = h.bus.mmioRead(2, Bar2.ENGINE_STATUS, 4);
  let peak = rssMiB(pid);
  // Wait for the flood to be worked off, a bounded amount at a time (merged tails split again at the limits).
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline && !(h.bus.mmioRead(2, Bar2.ENGINE_STATUS, 4) & EngineStatus.IDLE)) {
    peak = Math.max(peak, rssMiB(pid));
    await new Promise((r) => setTimeout(r, 5));
  }
  peak = Math.max(peak, rssMiB(pid));
  const stats = (await serve.request({ cmd: "stats" })).vgpus as { uuid: string; stats: VgpuStatsLike }[];
  const hs = stats.find((s) => s.uuid === A)!.stats;
  assert.ok(hs.backpressure >= 1 && status & 8, `the queue-full state was reached (${JSON.stringify(hs)})`);
  assert.equal(hs.rejected, 0, "held back, not refused");
  assert.equal(h.bus.mmioRead(2, Bar2.RING_HEAD, 4), 100 * 12, "every batch start of the flood ran");
  t.diagnostic(`daemon RSS grew ${(peak - before).toFixed(1)} MiB during the flood`);
  assert.ok(
    peak - before < 64,
    `daemon RSS grew ${(peak - before).toFixed(1)} MiB (from ${before.toFixed(0)})`,
  );
  assert.equal(await checksum(B), victim, "B's memory checksum unchanged");
  v.driver.execute(xyColorBlt(v.driver.partition.gmBase, 4096, { x: 0, y: 0, width: 16, height: 1 }, 1));
  h.driver.recover();
  h.close();
  v.close();
});

interface VgpuStatsLike {
  submissions: number;
  rejected: number;
  backpressure: number;
}
