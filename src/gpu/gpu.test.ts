import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  Dispi,
  EngineError,
  EngineStatus,
  Irq,
  MI_BATCH_BUFFER_END,
  MI_NOOP,
  MI_USER_INTERRUPT,
  PAGE_SIZE,
  RingCtl,
  type BlitOp,
  type Surface,
  encodeOps,
  gttEntry,
  miBatchBufferStart,
  miFlushDw,
  miLoadRegisterImm,
  miStoreDataImm,
  xyColorBlt,
  xySrcCopyBlt,
} from "../abi/index.js";
import {
  DESKTOP,
  EngineFault,
  NativeDriver,
  Reg,
  SoftwareGpu,
  desktopFrame,
  overlappingCopy,
  pngToFrame,
  prng,
} from "./index.js";

const MiB = 1 << 20;

function setup(localMemorySize = 64 * MiB) {
  const gpu = new SoftwareGpu({ localMemorySize, gttEntries: 32 << 10 });
  const drv = new NativeDriver(gpu, { size: 48 * MiB });
  return { gpu, drv };
}

/** The reference: surfaces as plain arrays, blits as plain loops over clipped rectangles. */
class Reference {
  readonly pixels = new Map<string, Uint32Array>();
  constructor(readonly surfaces: Record<string, Surface>) {
    for (const [n, s] of Object.entries(surfaces))
      this.pixels.set(n, new Uint32Array((s.pitch / 4) * s.height));
  }
  apply(op: BlitOp): void {
    const d = this.surfaces[op.dst]!;
    const dp = this.pixels.get(op.dst)!;
    const w = d.pitch / 4;
    if (op.kind === "fill") {
      for (let y = Math.max(0, op.rect.y); y < op.rect.y + op.rect.height; y++)
        for (let x = Math.max(0, op.rect.x); x < Math.min(w, op.rect.x + op.rect.width); x++)
          dp[y * w + x] = op.color >>> 0;
      return;
    }
    const s = this.surfaces[op.src]!;
    const sp = this.pixels.get(op.src)!.slice(); // read the whole source first: overlap semantics
    const sw = s.pitch / 4;
    for (let j = 0; j < op.rect.height; j++)
      for (let i = 0; i < op.rect.width; i++) {
        const dx = op.rect.x + i,
          dy = op.rect.y + j,
          sx = op.srcX + i,
          sy = op.srcY + j;
        if (dx < 0 || dy < 0 || dx >= w || sx < 0 || sy < 0 || sx >= sw) continue;
        dp[dy * w + dx] = sp[sy * sw + sx]!;
      }
  }
}

function readSurface(gpu: SoftwareGpu, s: Surface): Uint32Array {
  const out = new Uint8Array(s.pitch * s.height);
  gpu.memory.readBytes(s.gma, out);
  return new Uint32Array(out.buffer);
}

test("XY_COLOR_BLT and XY_SRC_COPY_BLT are bit-exact against a reference, clipping and overlaps included", () => {
  const { gpu, drv } = setup();
  const surfaces = { a: drv.allocSurface(300, 200), b: drv.allocSurface(257, 190) };
  const ref = new Reference(surfaces);
  const rnd = prng(7);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo));
  const ops: BlitOp[] = [];
  for (let i = 0; i < 300; i++) {
    const dst = rnd() < 0.5 ? "a" : "b";
    const rect = { x: int(-40, 300), y: int(-40, 180), width: int(1, 120), height: int(1, 60) };
    if (rnd() < 0.4) ops.push({ kind: "fill", dst, rect, color: int(0, 0xffffffff) });
    else
      ops.push({
        kind: "copy",
        src: rnd() < 0.5 ? "a" : "b",
        dst,
        srcX: int(-20, 280),
        srcY: int(-20, 170),
        rect,
      });
  }
  // Keep every op inside the surfaces vertically: the GTT bounds are tested elsewhere.
  const safe = ops.filter((op) => {
    const d = surfaces[op.dst as "a" | "b"];
    const bottom = op.rect.y + op.rect.height;
    if (bottom > d.height) return false;
    if (op.kind === "copy") return op.srcY + op.rect.height <= surfaces[op.src as "a" | "b"].height;
    return true;
  });
  for (const op of safe) {
    drv.submit(encodeOps([op], surfaces));
    ref.apply(op);
  }
  assert.ok(safe.length > 100);
  assert.deepEqual(readSurface(gpu, surfaces.a), ref.pixels.get("a"));
  assert.deepEqual(readSurface(gpu, surfaces.b), ref.pixels.get("b"));
  gpu.close();
});

test("large random blits run in bands, one band per step, resumed across steps, bit-exact against the reference", () => {
  const bandBytes = 16 << 10;
  const gpu = new SoftwareGpu({ localMemorySize: 64 * MiB, gttEntries: 32 << 10, bandBytes });
  const drv = new NativeDriver(gpu, { size: 48 * MiB });
  gpu.autoRun = false; // we step the engine ourselves
  // Same pitch on both surfaces (linear moves) and different pitches (row bands).
  const surfaces = {
    a: drv.allocSurface(1024, 600),
    b: drv.allocSurface(1024, 500),
    c: drv.allocSurface(777, 640),
  };
  const names = ["a", "b", "c"] as const;
  const ref = new Reference(surfaces);
  const rnd = prng(11);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo));
  let steps = 0;
  for (let i = 0; i < 60; i++) {
    const dst = names[int(0, 3)]!;
    const d = surfaces[dst];
    const y = int(-30, d.height - 1);
    const height = int(1, d.height - Math.max(0, y) + 1);
    const full = rnd() < 0.3;
    const rect = full
      ? { x: 0, y, width: d.width, height }
      : { x: int(-40, d.width), y, width: int(1, 1100), height };
    let op: BlitOp;
    if (rnd() < 0.35) op = { kind: "fill", dst, rect, color: int(0, 0xffffffff) };
    else {
      const src = rnd() < 0.5 ? dst : names[int(0, 3)]!;
      const sh = surfaces[src].height;
      const rows = Math.max(0, y) + height - y; // rows the copy reads
      const srcY = int(-10, Math.max(-9, sh - rows + 1));
      op = { kind: "copy", src, dst, srcX: full ? 0 : int(-20, surfaces[src].width), srcY, rect };
      if (srcY + rect.height > sh) continue;
    }
    drv.submit(encodeOps([op], surfaces));
    ref.apply(op);
    while (!gpu.engine.idle) {
      const before = gpu.engine.stats.longestStepBytes;
      assert.equal(gpu.engine.run(1), 1);
      steps++;
      assert.ok(gpu.engine.stats.longestStepBytes <= Math.max(bandBytes, before));
    }
    assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.NONE);
  }
  assert.ok(gpu.engine.stats.longestStepBytes <= bandBytes, "no step wrote more than a band");
  assert.ok(gpu.engine.stats.bands > gpu.engine.stats.blits * 2, "the blits really ran in several bands");
  assert.ok(steps > 120);
  for (const n of names) assert.deepEqual(readSurface(gpu, surfaces[n]), ref.pixels.get(n), `surface ${n}`);
  gpu.close();
});

test("overlapping copies on one surface behave as if the source were read first", () => {
  const { gpu, drv } = setup();
  const w = overlappingCopy();
  const surfaces = drv.prepare(w);
  const ref = new Reference(surfaces);
  for (const op of w.setup) ref.apply(op);
  drv.run(w, surfaces);
  for (const op of w.ops) ref.apply(op);
  assert.deepEqual(readSurface(gpu, surfaces.s!), ref.pixels.get("s"));
  gpu.close();
});

test("MI commands: store, load register, flush with post-sync write and notify, user interrupt", () => {
  const { gpu, drv } = setup();
  gpu.interrupts.imr = 0;
  gpu.interrupts.ier = 0xffffffff;
  const fired: number[] = [];
  gpu.interrupts.onInterrupt = (bits) => fired.push(bits);
  const buf = drv.alloc(4096);
  drv.submit([
    MI_NOOP,
    ...miStoreDataImm(buf + 8, 0xcafef00d),
    ...miLoadRegisterImm([
      [Reg.GPR0 + 4, 0x11111111],
      [Reg.GPR0 + 60, 0x22222222],
    ]),
    ...miFlushDw({ store: { address: buf + 16, value: 0x5eed }, notify: true }),
    MI_USER_INTERRUPT,
  ]);
  assert.equal(gpu.memory.read32(buf + 8), 0xcafef00d);
  assert.equal(gpu.memory.read32(buf + 16), 0x5eed);
  assert.equal(gpu.mmioRead(Reg.GPR0 + 4), 0x11111111);
  assert.equal(gpu.mmioRead(Reg.GPR0 + 60), 0x22222222);
  assert.ok(fired.some((b) => b & Irq.FLUSH) && fired.some((b) => b & Irq.USER));
  assert.equal(gpu.mmioRead(Reg.IIR) & (Irq.FLUSH | Irq.USER), Irq.FLUSH | Irq.USER);
  gpu.mmioWrite(Reg.IIR, Irq.USER);
  assert.equal(gpu.mmioRead(Reg.IIR) & Irq.USER, 0, "IIR is write-1-to-clear");
  // A register outside the general-purpose set is refused.
  assert.throws(() => drv.submit(miLoadRegisterImm([[Reg.RING_START, 0]])), EngineFault);
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.BAD_REGISTER);
  gpu.close();
});

test("GTT: scattered local pages and system-memory pages translate; unmapped pages fault cleanly", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 16 * MiB, gttEntries: 4096 });
  const drv = new NativeDriver(gpu, { size: 4 * MiB, batchBytes: 256 << 10 });
  // A 4-page surface at GMA 8 MiB: pages scattered in local memory, one page in system memory.
  const gma = 8 * MiB;
  const sysPage = new Uint8Array(PAGE_SIZE);
  gpu.setSystemMemory({ page: (a) => (a === 0x7000_0000n ? sysPage : undefined) });
  gpu.gtt.write(gma / PAGE_SIZE + 0, gttEntry("local", 12 * MiB + 3 * PAGE_SIZE));
  gpu.gtt.write(gma / PAGE_SIZE + 1, gttEntry("system", 0x7000_0000n));
  gpu.gtt.write(gma / PAGE_SIZE + 2, gttEntry("local", 12 * MiB));
  gpu.gtt.write(gma / PAGE_SIZE + 3, gttEntry("local", 12 * MiB + PAGE_SIZE));
  const s: Surface = { gma, width: 1024, height: 4, pitch: 4096 };
  drv.submit(xyColorBlt(s.gma, s.pitch, { x: 0, y: 0, width: 1024, height: 4 }, 0xff102030));
  drv.submit(xyColorBlt(s.gma, s.pitch, { x: 1000, y: 0, width: 24, height: 4 }, 0xffabcdef));
  const words = gpu.localMemory.words;
  assert.equal(words[(12 * MiB + 3 * PAGE_SIZE) / 4], 0xff102030, "page 0 → local +3 pages");
  assert.equal(new DataView(sysPage.buffer).getUint32(1000 * 4, true), 0xffabcdef, "page 1 → system memory");
  assert.equal(words[(12 * MiB) / 4 + 1023], 0xffabcdef, "page 2 → local +0");
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.NONE);
  // Page 4 is unmapped: the engine stops with a fault and an interrupt, nothing throws.
  gpu.interrupts.imr = 0;
  assert.throws(
    () => drv.submit(xyColorBlt(s.gma, s.pitch, { x: 0, y: 0, width: 1024, height: 6 }, 0)),
    EngineFault,
  );
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.GTT_FAULT);
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR_ADDR), gma + 4 * PAGE_SIZE);
  assert.equal(gpu.mmioRead(Reg.IIR) & (Irq.GTT_FAULT | Irq.ENGINE_ERROR), Irq.GTT_FAULT | Irq.ENGINE_ERROR);
  assert.equal(gpu.mmioRead(Reg.ENGINE_STATUS) & EngineStatus.ERROR, EngineStatus.ERROR);
  gpu.mmioWrite(Reg.ENGINE_RESET, 1);
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.NONE);
  drv.submit(miStoreDataImm(drv.alloc(4096), 1));
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.NONE, "the engine works again after reset");
  gpu.close();
});

test("the ring wraps around", () => {
  const gpu = new SoftwareGpu({ localMemorySize: 16 * MiB, gttEntries: 4096 });
  const drv = new NativeDriver(gpu, { size: 8 * MiB, ringBytes: PAGE_SIZE, batchBytes: 256 << 10 });
  const buf = drv.alloc(PAGE_SIZE);
  for (let i = 0; i < 1000; i++) drv.submit(miStoreDataImm(buf + (i % 1024) * 4, i)); // 16 bytes each: 4 wraps
  for (let i = 1000 - 1024 + 24; i < 1000; i++)
    if (i >= 0) assert.equal(gpu.memory.read32(buf + (i % 1024) * 4), i);
  assert.equal(gpu.mmioRead(Reg.RING_HEAD), gpu.mmioRead(Reg.RING_TAIL));
  assert.equal(RingCtl.lengthPages(gpu.mmioRead(Reg.RING_CTL)), 1);
  gpu.close();
});

test("batches: chained, nested one level, and a third level refused", () => {
  const { gpu, drv } = setup();
  const words = gpu.localMemory.words;
  const buf = drv.alloc(PAGE_SIZE);
  const [a, b, c, d] = [
    drv.alloc(PAGE_SIZE),
    drv.alloc(PAGE_SIZE),
    drv.alloc(PAGE_SIZE),
    drv.alloc(PAGE_SIZE),
  ];
  // a: store 1, call c (2nd level), store 3, chain to b.  b: store 4, end.  c: store 2, end.
  words.set(
    [
      ...miStoreDataImm(buf, 1),
      ...miBatchBufferStart(c, true),
      ...miStoreDataImm(buf + 8, 3),
      ...miBatchBufferStart(b),
    ],
    a / 4,
  );
  words.set([...miStoreDataImm(buf + 12, 4), MI_BATCH_BUFFER_END], b / 4);
  words.set([...miStoreDataImm(buf + 4, 2), MI_BATCH_BUFFER_END], c / 4);
  drv.submit([...miBatchBufferStart(a), ...miStoreDataImm(buf + 16, 5)]);
  assert.deepEqual(
    [0, 4, 8, 12, 16].map((o) => gpu.memory.read32(buf + o)),
    [1, 2, 3, 4, 5],
  );
  assert.equal(gpu.engine.stats.batches, 3);
  // d calls c2 which tries to nest again.
  words.set([...miBatchBufferStart(c, true), MI_BATCH_BUFFER_END], d / 4);
  words.set([...miBatchBufferStart(d, true), MI_BATCH_BUFFER_END], c / 4);
  assert.throws(() => drv.submit(miBatchBufferStart(d)), EngineFault);
  assert.equal(gpu.mmioRead(Reg.ENGINE_ERROR), EngineError.BATCH_NESTING);
  gpu.close();
});

test("an engine reset in the middle of a batch stops it and leaves the engine usable", () => {
  const { gpu, drv } = setup();
  gpu.autoRun = false;
  const buf = drv.alloc(PAGE_SIZE);
  const batch = drv.alloc(64 * PAGE_SIZE);
  const cmds: number[] = [];
  for (let i = 0; i < 1000; i++) cmds.push(...miStoreDataImm(buf + (i % 512) * 4, i + 1));
  gpu.localMemory.words.set([...cmds, MI_BATCH_BUFFER_END], batch / 4);
  drv.submit(miBatchBufferStart(batch));
  assert.equal(gpu.engine.run(100), 100);
  assert.equal(gpu.mmioRead(Reg.ENGINE_STATUS) & EngineStatus.IN_BATCH, EngineStatus.IN_BATCH);
  assert.notEqual(gpu.mmioRead(Reg.BB_ADDR), 0);
  gpu.mmioWrite(Reg.ENGINE_RESET, 1);
  assert.equal(gpu.mmioRead(Reg.ENGINE_STATUS), EngineStatus.IDLE);
  // 100 commands: the batch start, then stores 0..98.
  assert.equal(gpu.memory.read32(buf + 98 * 4), 99, "work before the reset stands");
  assert.equal(gpu.memory.read32(buf + 99 * 4), 0, "work after it never ran");
  gpu.autoRun = true;
  drv.submit(miStoreDataImm(buf, 0xabc));
  assert.equal(gpu.memory.read32(buf), 0xabc);
  gpu.close();
});

test("garbage command streams stop the engine with an error and an interrupt, never an exception", () => {
  const { gpu, drv } = setup();
  gpu.interrupts.imr = 0;
  const rnd = prng(99);
  let errors = 0;
  for (let round = 0; round < 200; round++) {
    const junk = Array.from({ length: 1 + Math.floor(rnd() * 30) }, () => Math.floor(rnd() * 0x100000000));
    if (round % 3 === 0)
      junk[0] = xySrcCopyBlt(0, 4096, { x: 0, y: 0, width: 32767, height: 32767 }, 0, 4096, 0, 0)[0]!;
    gpu.autoRun = false;
    drv.submit(junk); // autoRun off: the driver does not run (or check) the engine itself
    gpu.engine.runToIdle(100_000);
    if (gpu.mmioRead(Reg.ENGINE_ERROR) !== EngineError.NONE) {
      errors++;
      assert.equal(gpu.mmioRead(Reg.IIR) & Irq.ENGINE_ERROR, Irq.ENGINE_ERROR);
      gpu.mmioWrite(Reg.IIR, 0xffffffff);
    }
    gpu.mmioWrite(Reg.ENGINE_RESET, 1);
  }
  assert.ok(errors > 150, `${errors} of 200 junk streams stopped the engine`);
  gpu.close();
});

test("display: DISPI identity and caps, and a desktop frame's PNG matches the reference pixel for pixel", () => {
  const { gpu, drv } = setup();
  const dispi = (i: number) => gpu.mmioRead(Reg.DISPI + i * 2, 2);
  assert.equal(dispi(Dispi.ID), 0xb0c5);
  gpu.mmioWrite(Reg.DISPI + Dispi.ENABLE * 2, 0x02, 2);
  assert.equal(dispi(Dispi.XRES), 2560, "GETCAPS reports the maximum");
  assert.equal(gpu.mmioRead(Reg.QEXT_BYTEORDER), 0x1e1e1e1e);
  gpu.interrupts.imr = 0;
  gpu.vblank();
  assert.equal(gpu.mmioRead(Reg.VBLANK_COUNT), 1);
  assert.equal(gpu.mmioRead(Reg.IIR) & Irq.VBLANK, Irq.VBLANK, "vblank raises its interrupt");
  const w = desktopFrame(3);
  const surfaces = drv.prepare(w);
  drv.run(w, surfaces);
  drv.modeSet(surfaces.screen!);
  assert.equal(dispi(Dispi.XRES), DESKTOP.width);
  const dir = mkdtempSync(join(tmpdir(), "mgpu-png-"));
  const file = join(dir, "desktop.png");
  writeFileSync(file, gpu.screenshotPng());
  const frame = pngToFrame(readFileSync(file));
  assert.equal(frame.width, 1280);
  assert.equal(frame.height, 800);
  const ref = new Reference(surfaces);
  for (const op of [...w.setup, ...w.ops]) ref.apply(op);
  const expected = ref.pixels.get("screen")!;
  let mismatches = 0;
  for (let i = 0; i < 1280 * 800; i++) {
    const px = expected[i]!;
    const o = i * 4;
    if (
      frame.rgba[o] !== ((px >>> 16) & 0xff) ||
      frame.rgba[o + 1] !== ((px >>> 8) & 0xff) ||
      frame.rgba[o + 2] !== (px & 0xff)
    )
      mismatches++;
  }
  assert.equal(mismatches, 0);
  // Spot check: the clear colour survives somewhere, and windows were drawn.
  const colours = new Set(expected);
  assert.ok(colours.size > 50);
  gpu.close();
});
