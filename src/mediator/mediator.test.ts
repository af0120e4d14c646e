import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Bar2,
  DISPI_ID5,
  Dispi,
  EngineError,
  EngineReg,
  MI_BATCH_BUFFER_END,
  MI_NOOP,
  MI_USER_INTERRUPT,
  PAGE_SIZE,
  PV_MAGIC,
  PvInfo,
  ScanRejectionCode,
  type ScanRejection,
  VgpuBar,
  type Workload,
  encodeOps,
  gttEntry,
  miBatchBufferStart,
  miLoadRegisterImm,
  miStoreDataImm,
  xyColorBlt,
  xySrcCopyBlt,
} from "../abi/index.js";
import {
  EngineFault,
  GraphicsMemory,
  Gtt,
  LocalMemory,
  NativeDriver,
  Reg,
  SoftwareGpu,
  desktopFrame,
} from "../gpu/index.js";
import { GuestDriver } from "../guest/index.js";
import { DirectBus } from "../../test/support/direct-bus.js";
import { MAX_VGPU_ID, Mediator, MediatorError } from "./mediator.js";
import { ScanError, Scanner } from "./scanner.js";
import type { Mpt } from "../hypervisor/mpt.js";
import { quietLogger } from "../base/index.js";
import { Cfg, Command } from "../pci/index.js";

const quiet = quietLogger;
/** These tests never reach guest memory. */
const noGuest: Mpt = {
  mapGuestPage: () => undefined,
  wrote: () => {},
  injectInterrupt: () => {},
  release: () => {},
  cancel: () => {},
  phase: "run",
  stagesPages: false,
  needsStaging: () => false,
  isStaged: () => false,
  stagedPages: 0,
  stage: () => assert.fail("no guest memory in this test"),
  drop: () => {},
  writeBack: () => assert.fail("no guest memory in this test"),
};

/** 1 MiB of local memory behind a GTT that maps graphics address A to local address A. */
function linearGraphicsMemory(): { local: LocalMemory; mem: GraphicsMemory; w: Uint32Array } {
  const local = new LocalMemory(1 << 20);
  const gtt = new Gtt(256);
  for (let i = 0; i < 256; i++) gtt.write(i, gttEntry("local", i * 4096));
  return { local, mem: new GraphicsMemory(local, gtt), w: local.words };
}

test("types: available instances follow what is free; a failed create allocates nothing", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 128 << 20 });
  const m = new Mediator({ gpu, mpt: () => noGuest, logger: quiet });
  assert.equal(m.availableInstances("mgpu-4q"), 1, "96 MiB free after the host's 32: one 64 MiB slice");
  assert.equal(m.availableInstances("mgpu-1q"), 6);
  const a = m.create("mgpu-4q");
  assert.equal(m.availableInstances("mgpu-4q"), 0);
  assert.throws(
    () => m.create("mgpu-4q"),
    (e: unknown) => e instanceof MediatorError && e.code === "ENOSPC",
  );
  assert.equal(m.availableInstances("mgpu-1q"), 2, "the failed create took nothing");
  assert.throws(
    () => m.create("no-such-type"),
    (e: unknown) => e instanceof MediatorError && e.code === "ENOTYPE",
  );
  assert.throws(
    () => m.create("mgpu-1q", a.uuid),
    (e: unknown) => e instanceof MediatorError && e.code === "EEXIST",
  );
  m.remove(a.uuid);
  assert.equal(m.availableInstances("mgpu-4q"), 1);
  gpu.close();
});

test("the scheduler shares the engine by weight", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 256 << 20 });
  // Busy time from a clock that ticks once per look: identical workloads cost the same, so the check is exact.
  let ticks = 0;
  const m = new Mediator({ gpu, mpt: () => noGuest, logger: quiet, scheduler: { clock: () => ticks++ } });
  const run = () => m.scheduler.drain();
  const light = m.create("mgpu-1q"); // weight 1
  const heavy = m.create("mgpu-2q"); // weight 2
  const drivers = [light, heavy].map((v) => {
    const d = new GuestDriver(new DirectBus(v.pci, run));
    d.init();
    return d;
  });
  // Queue the same 60 workloads on each without letting the scheduler run.
  for (const d of drivers) {
    const s = d.allocSurface(1024, 512);
    for (let i = 0; i < 60; i++)
      d.submit(xyColorBlt(s.gma, s.pitch, { x: 0, y: 0, width: 1024, height: 512 }, i));
  }
  for (let i = 0; i < 60; i++) m.scheduler.tick();
  const share = heavy.stats.busyMs / (heavy.stats.busyMs + light.stats.busyMs);
  assert.ok(Math.abs(share - 2 / 3) < 0.02, `heavy's share ${share.toFixed(3)} should be 2/3 (weights 2:1)`);
  m.scheduler.drain();
  gpu.close();
});

test("the scanner flattens ring, chained and nested batches into exactly the commands that run", () => {
  const { local, mem, w } = linearGraphicsMemory();
  const ring = 0x10000,
    a = 0x20000,
    b = 0x21000,
    c = 0x22000;
  w.set([...miStoreDataImm(0x30000, 1), ...miBatchBufferStart(c, true), ...miBatchBufferStart(b)], a / 4);
  w.set([MI_USER_INTERRUPT, MI_BATCH_BUFFER_END], b / 4);
  w.set([...miStoreDataImm(0x30004, 2), MI_BATCH_BUFFER_END], c / 4);
  const stream = [MI_NOOP, ...miBatchBufferStart(a), ...miStoreDataImm(0x30008, 3)];
  w.set(stream, ring / 4);
  const scanner = new Scanner(mem, { base: 0, size: 1 << 20 });
  const r = scanner.scanRing(ring, 4096, 0, stream.length * 4);
  assert.deepEqual(Array.from(r.commands), [
    MI_NOOP,
    ...miStoreDataImm(0x30000, 1),
    ...miStoreDataImm(0x30004, 2),
    MI_USER_INTERRUPT,
    ...miStoreDataImm(0x30008, 3),
  ]);
  // A partition that stops short of the batches refuses them.
  const narrow = new Scanner(mem, { base: 0, size: 0x20000 });
  assert.throws(
    () => narrow.scanRing(ring, 4096, 0, stream.length * 4),
    (e: unknown) => e instanceof ScanError && e.reason === "address-outside-partition",
  );
  local.close();
});

test("the engine and the scanner refuse the same malformed commands (one command table)", () => {
  const rect = { x: 0, y: 0, width: 8, height: 8 };
  const fill = xyColorBlt(0x10000, 4096, rect, 1);
  const copy = xySrcCopyBlt(0x10000, 4096, rect, 0x20000, 4096, 0, 0);
  const malformed: [string, number[], ScanRejection, number][] = [
    ["misaligned store", miStoreDataImm(0x30002, 1), "malformed-command", EngineError.BAD_COMMAND],
    [
      "store too long",
      [miStoreDataImm(0, 0)[0]! + 2, 0x30000, 0, 1, 2, 3],
      "malformed-command",
      EngineError.BAD_COMMAND,
    ],
    [
      "fill with pitch 0",
      [fill[0]!, fill[1]! & ~0xffff, ...fill.slice(2)],
      "malformed-command",
      EngineError.BAD_COMMAND,
    ],
    [
      "fill with the copy ROP",
      [fill[0]!, (fill[1]! & ~0xff0000) | (0xcc << 16), ...fill.slice(2)],
      "malformed-command",
      EngineError.BAD_COMMAND,
    ],
    [
      "copy with source pitch 2",
      [...copy.slice(0, 7), 2, ...copy.slice(8)],
      "malformed-command",
      EngineError.BAD_COMMAND,
    ],
    [
      "register outside the GPRs",
      miLoadRegisterImm([[EngineReg.RING_TAIL, 0]]),
      "register-not-allowed",
      EngineError.BAD_REGISTER,
    ],
    ["batch start misaligned", miBatchBufferStart(0x30002), "malformed-command", EngineError.BAD_COMMAND],
  ];
  for (const [what, dwords, reason, engineError] of malformed) {
    const gpu = new SoftwareGpu({ localMemorySize: 1 << 20, gttEntries: 256 });
    const drv = new NativeDriver(gpu, { batchBytes: 64 << 10 });
    const scanner = new Scanner(gpu.memory, { base: 0, size: 1 << 20 });
    assert.throws(() => drv.submit(dwords), EngineFault, what);
    assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), engineError, what);
    assert.throws(
      () => scanner.scanRing(drv.ringGma, drv.ringBytes, 0, dwords.length * 4),
      (e: unknown) => e instanceof ScanError && e.reason === reason,
      what,
    );
    gpu.close();
  }
});

test("BAR2 is a map of register blocks: each answers at its offsets, gaps read zero and are logged", () => {
  const warnings: string[] = [];
  const logger = { ...quietLogger, warn: (_fields: object, message: string) => void warnings.push(message) };
  const gpu = new SoftwareGpu({ localMemorySize: 64 << 20 });
  const m = new Mediator({ gpu, mpt: () => noGuest, logger });
  const v = m.create("mgpu-1q");
  const bus = new DirectBus(v.pci, () => m.scheduler.drain());
  bus.configWrite(Cfg.COMMAND, 2, Command.MEMORY);
  const mmio = (offset: number) => bus.mmioRead(VgpuBar.MMIO, offset, 4);
  assert.equal(mmio(Bar2.PV_INFO + PvInfo.MAGIC), PV_MAGIC);
  assert.equal(mmio(Bar2.PV_INFO + PvInfo.GTT_OFFSET), Bar2.GTT);
  assert.equal(mmio(Bar2.PV_INFO + PvInfo.GTT_ENTRIES), v.gm.size / 4096);
  assert.equal(bus.mmioRead(VgpuBar.MMIO, Bar2.DISPI + Dispi.ID * 2, 2), DISPI_ID5);
  assert.equal(mmio(Bar2.QEXT_SIZE), 8);
  assert.equal(mmio(Bar2.IMR), 0xffffffff, "interrupts masked at power-on");
  bus.mmioWrite(VgpuBar.MMIO, Bar2.GPR0 + 8, 4, 0x1234);
  assert.equal(mmio(Bar2.GPR0 + 8), 0x1234);
  bus.mmioWrite(VgpuBar.MMIO, Bar2.GTT + 4, 4, 0xab);
  assert.equal(mmio(Bar2.GTT + 4), 0xab, "the guest's GTT reads back what it wrote");
  // Declared but empty blocks (EDID, VGA ioports) read zero quietly; a gap is reported.
  assert.equal(mmio(Bar2.EDID), 0);
  assert.equal(mmio(Bar2.VGA_IOPORTS), 0);
  assert.deepEqual(warnings, []);
  assert.equal(mmio(0x1000), 0);
  bus.mmioWrite(VgpuBar.MMIO, 0x1000, 4, 1);
  assert.deepEqual(warnings, ["unknown vGPU register", "unknown vGPU register"]);
  assert.equal(v.stats.traps, 14);
  gpu.close();
});

test("workloads preempted mid-blit and resumed later render bit-exact against the native driver", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 256 << 20, bandBytes: 64 << 10 });
  // One look at the clock per engine run: every slice is a band or a few commands, then another vGPU.
  let ticks = 0;
  const m = new Mediator({
    gpu,
    mpt: () => noGuest,
    logger: quiet,
    scheduler: { clock: () => ticks++, timeBudgetMs: 1e9 },
  });
  const vgpus = [m.create("mgpu-1q"), m.create("mgpu-2q"), m.create("mgpu-2q")];
  const drivers = vgpus.map((v) => {
    const d = new GuestDriver(new DirectBus(v.pci, () => m.scheduler.tick()));
    d.slots = 4;
    d.init();
    return d;
  });
  const surfaces = drivers.map((d) => d.prepare(desktopFrame(1), true));
  const seeds = [2, 3, 4, 5, 6, 7];
  for (const seed of seeds)
    drivers.forEach((d, i) => d.enqueue(encodeOps(desktopFrame(seed + i).ops, surfaces[i]!)));
  for (const d of drivers) d.drain();
  assert.ok(m.scheduler.stats.preemptions > 100, `${m.scheduler.stats.preemptions} preemptions`);
  assert.ok(gpu.engine.stats.longestStepBytes <= gpu.engine.bandBytes);
  vgpus.forEach((v, i) => {
    assert.equal(v.error, 0);
    drivers[i]!.modeSet(surfaces[i]!.screen!);
    assert.deepEqual(
      v.scanout().rgba,
      nativeFrame(
        desktopFrame(1),
        seeds.map((s) => s + i),
      ),
      `vGPU ${i}`,
    );
  });
  gpu.close();
});

/** The frame a native driver draws: setup of `w`, then the ops of the desktop frames with `seeds`. */
function nativeFrame(w: Workload, seeds: readonly number[]): Uint8Array {
  const gpu = new SoftwareGpu({ localMemorySize: 64 << 20, gttEntries: 16 << 10 });
  const drv = new NativeDriver(gpu, { size: 48 << 20 });
  const s = drv.prepare(w);
  for (const seed of seeds) drv.submitBatch(encodeOps(desktopFrame(seed).ops, s));
  drv.modeSet(s[w.output]!);
  const rgba = gpu.scanout().rgba;
  gpu.close();
  return rgba;
}

test("owner tags cannot alias: past 65,536 creations a new vGPU's fill lands in its own guest page, never the victim's", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 48 << 20, gttEntries: 16 << 10 });
  const tiny = {
    name: "tiny",
    description: "test type: room for the guest driver's ring and batch",
    localMemory: 8 << 20,
    graphicsMemory: 8 << 20,
    maxWidth: 64,
    maxHeight: 64,
    weight: 1,
  };
  const pages = new Map<string, Uint8Array>();
  const guestOf = (name: string): Mpt => ({
    ...noGuest,
    mapGuestPage: (gpa) => (gpa === 0x10000n ? pages.get(name) : undefined),
  });
  const m = new Mediator({ gpu, mpt: () => noGuest, types: [tiny], hostReserve: 16 << 20, logger: quiet });
  pages.set("victim", new Uint8Array(PAGE_SIZE).fill(0x5a));
  const victim = m.create("tiny", undefined, () => guestOf("victim"));
  const before = Buffer.from(pages.get("victim")!).toString("hex");
  const ids = new Set<number>();
  // With ids never reused, the 65,537th creation (the hostile one below) got id 65,537: tag 1 << 16 after
  // the 32-bit shift, the victim's.
  const creations = 65_535;
  for (let i = 0; i < creations; i++) {
    const v = m.create("tiny");
    ids.add(v.id);
    m.remove(v.uuid);
  }
  // The next tenant maps guest frame 0x10000 (its own) and fills it through the engine.
  pages.set("hostile", new Uint8Array(PAGE_SIZE));
  const hostile = m.create("tiny", undefined, () => guestOf("hostile"));
  const d = new GuestDriver(new DirectBus(hostile.pci, () => m.scheduler.drain()));
  d.init();
  const index = d.partition.gmSize / PAGE_SIZE - 1;
  d.writeGtt(index, 0x10000, true);
  d.execute(
    xyColorBlt(
      d.partition.gmBase + index * PAGE_SIZE,
      4096,
      { x: 0, y: 0, width: 1024, height: 1 },
      0xf111f111,
    ),
  );
  assert.ok(
    new Uint32Array(pages.get("hostile")!.buffer).every((w) => w === 0xf111f111),
    "its own page",
  );
  assert.equal(Buffer.from(pages.get("victim")!).toString("hex"), before, "the victim's page is untouched");
  const most = Math.max(...ids, hostile.id);
  assert.ok(most <= MAX_VGPU_ID && !ids.has(victim.id), `${ids.size} ids used, up to ${most}`);
  gpu.close();
});

/** Starts `cmds` as a batch in the vGPU's own memory without waiting (the guest driver's execute waits). */
function startBatch(d: GuestDriver, fb: Uint8Array, cmds: readonly number[]): void {
  const batch = d.alloc((cmds.length + 1) * 4);
  new Uint32Array(fb.buffer, fb.byteOffset + (batch - d.partition.gmBase), cmds.length + 1).set([
    ...cmds,
    MI_BATCH_BUFFER_END,
  ]);
  d.submit([...miBatchBufferStart(batch), MI_USER_INTERRUPT]);
}

const PATTERN = 0x7e57e57e;

/** A tenant with a long fill of PATTERN on the engine part-way, and more queued behind it. */
function busyTenant(m: Mediator) {
  const v = m.create("mgpu-1q");
  const d = new GuestDriver(new DirectBus(v.pci, () => m.scheduler.drain()));
  d.init();
  const fb = v.pci.barMemory(0);
  const s = d.allocSurface(1024, 1024);
  const fills = Array.from({ length: 40 }, () =>
    xyColorBlt(s.gma, s.pitch, { x: 0, y: 0, width: 1024, height: 1024 }, PATTERN),
  ).flat();
  startBatch(d, fb, fills);
  startBatch(d, fb, fills);
  for (let i = 0; i < 3; i++) m.scheduler.tick();
  assert.ok(m.scheduler.pending, "work still running and queued");
  return { v, d, fb, s };
}

const holds = (bytes: Uint8Array, word: number) =>
  new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4).includes(word);

test("removal, engine reset and FLR drop running and queued work first: nothing of it lands afterwards", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 128 << 20 });
  const m = new Mediator({ gpu, mpt: () => noGuest, logger: quiet });

  // Removal: the next tenant gets the same slice and partition, zeroed, and none of the old work runs into it.
  const old = busyTenant(m);
  const { lmBase, gm } = old.v;
  m.remove(old.v.uuid);
  const next = m.create("mgpu-1q");
  assert.equal(next.lmBase, lmBase, "same slice");
  assert.equal(next.gm.base, gm.base, "same partition");
  m.scheduler.drain();
  assert.ok(!holds(next.localMemory, PATTERN), "the removed tenant's pattern never appears");
  assert.ok(
    next.localMemory.every((b) => b === 0),
    "the slice came zeroed",
  );
  const first = gm.base / PAGE_SIZE;
  assert.ok(
    gpu.gtt.lo.subarray(first, first + gm.size / PAGE_SIZE).every((e) => e === 0),
    "GTT partition clear",
  );
  assert.equal(next.pending || next.engine.scanPending, false);
  m.remove(next.uuid);

  // Engine reset and FLR: once they return, nothing queued or running before them writes anything.
  for (const how of ["engine reset", "FLR"] as const) {
    const t = busyTenant(m);
    if (how === "engine reset") t.d.recover();
    else t.v.pci.reset();
    t.fb.fill(0);
    m.scheduler.drain();
    assert.ok(!holds(t.fb, PATTERN), `no work from before the ${how} ran after it`);
    assert.equal(t.v.pending || t.v.engine.scanPending, false);
    m.remove(t.v.uuid);
  }
  gpu.close();
});

test("a submission that would pass a limit ends at the last ring command that fits; one command alone past it is refused", () => {
  const { local, mem, w } = linearGraphicsMemory();
  const ring = 0x10000,
    batch = 0x20000,
    big = 0x40000;
  // A batch of 100 stores (1600 bytes flattened); a limit of 4000 bytes holds two of them.
  for (let i = 0; i < 100; i++) w.set(miStoreDataImm(0x30000 + i * 4, i), batch / 4 + i * 4);
  w[batch / 4 + 400] = MI_BATCH_BUFFER_END;
  for (let i = 0; i < 300; i++) w.set(miStoreDataImm(0x30000, i), big / 4 + i * 4);
  w[big / 4 + 1200] = MI_BATCH_BUFFER_END;
  const stream = [...miBatchBufferStart(batch), ...miBatchBufferStart(batch), ...miBatchBufferStart(batch)];
  w.set(stream, ring / 4);
  const scanner = new Scanner(
    mem,
    { base: 0, size: 1 << 20 },
    { maxCommands: 1 << 16, maxBatchJumps: 256, maxBytes: 4000 },
  );
  const first = scanner.scanRing(ring, 4096, 0, stream.length * 4);
  assert.equal(first.tail, 24, "ends after the second batch start");
  assert.equal(first.commands.length, 800);
  const rest = scanner.scanRing(ring, 4096, first.tail, stream.length * 4);
  assert.equal(rest.tail, stream.length * 4);
  assert.equal(rest.commands.length, 400);
  // One batch start whose batch alone flattens past the limit: refused.
  w.set(miBatchBufferStart(big), ring / 4);
  assert.throws(
    () => scanner.scanRing(ring, 4096, 0, 12),
    (e: unknown) => e instanceof ScanError && e.reason === "runaway-batch",
  );
  local.close();
});

test("a scan stepped in small budgets ends exactly where one in a go does, across a ring wrap and a limit split", () => {
  const { local, mem, w } = linearGraphicsMemory();
  const ring = 0x10000,
    batch = 0x20000,
    nested = 0x21000;
  for (let i = 0; i < 100; i++) w.set(miStoreDataImm(0x30000 + i * 4, i), batch / 4 + i * 4);
  w.set(miBatchBufferStart(nested, true), batch / 4 + 400);
  w[batch / 4 + 403] = MI_BATCH_BUFFER_END;
  w.set([MI_USER_INTERRUPT, ...miStoreDataImm(0x30800, 7), MI_BATCH_BUFFER_END], nested / 4);
  // Starts 8 bytes before the end of the 4 KiB ring, so the stream wraps inside a batch start.
  const stream = [
    MI_NOOP,
    ...miBatchBufferStart(batch),
    ...miBatchBufferStart(batch),
    ...miStoreDataImm(0x30900, 9),
  ];
  const head = 4096 - 8;
  stream.forEach((d, i) => (w[ring / 4 + ((head / 4 + i) % 1024)] = d));
  const tail = (head + stream.length * 4) % 4096;
  const scanner = new Scanner(
    mem,
    { base: 0, size: 1 << 20 },
    { maxCommands: 1 << 16, maxBatchJumps: 256, maxBytes: 2000 },
  );
  const whole = (from: number) => scanner.scanRing(ring, 4096, from, tail);
  for (const budget of [4, 12, 100, 1000]) {
    let parts = 0;
    for (let from = head, k = 0; from !== tail; k++) {
      const want = whole(from);
      const job = scanner.begin(ring, 4096, from, tail);
      let got;
      let steps = 0;
      while (!(got = job.step(budget))) steps++;
      assert.ok(budget > 1000 || steps > 0, "took several steps");
      assert.deepEqual(Array.from(got.commands), Array.from(want.commands), `budget ${budget}, part ${k}`);
      assert.equal(got.count, want.count);
      assert.equal(got.bytesScanned, want.bytesScanned);
      assert.equal(got.tail, want.tail);
      assert.ok(k < 4 && want.tail !== from);
      from = want.tail;
      parts++;
    }
    assert.equal(parts, 2, "the limit splits the stream after the first batch start");
  }
  local.close();
});

test("a ring placed outside the partition is refused from the scheduler's loop, which carries on", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 128 << 20 });
  const m = new Mediator({ gpu, mpt: () => noGuest, logger: quiet });
  const v = m.create("mgpu-1q");
  const d = new GuestDriver(new DirectBus(v.pci, () => m.scheduler.drain()));
  d.init();
  const write = (offset: number, value: number) =>
    v.pci.regionWrite(VgpuBar.MMIO, offset, 4, new Uint8Array(new Uint32Array([value]).buffer), 0);
  write(Bar2.RING_CTL, 0);
  write(Bar2.RING_START, v.gm.base + v.gm.size);
  write(Bar2.RING_CTL, 1);
  write(Bar2.RING_TAIL, 16);
  m.scheduler.drain();
  assert.equal(v.error, EngineError.REJECTED | ScanRejectionCode["address-outside-partition"]);
  d.recover();
  d.init();
  d.execute(xyColorBlt(v.gm.base, 4096, { x: 0, y: 0, width: 16, height: 1 }, 7));
  assert.equal(v.error, EngineError.NONE, "the engine works after a reset");
  gpu.close();
});
