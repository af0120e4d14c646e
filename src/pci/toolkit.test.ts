import { test } from "node:test";
import assert from "node:assert/strict";
import { createMemfd, closeFd } from "../sys/index.js";
import { DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, MigState, PciRegion, VfioUserError } from "../vfio-user/index.js";
import { PciDevice } from "./pci-device.js";
import { DmaError, DmaSpace } from "./dma.js";
import { Migration } from "./migration.js";
import { RegisterFile } from "./registers.js";

test("register file: masks, W1C, handlers, sub-dword and straddling accesses, unknown offsets", () => {
  const unknown: number[] = [];
  const writes: [number, number][] = [];
  const regs = new RegisterFile(
    0x20,
    [
      { offset: 0x0, name: "ID", reset: 0x11223344, writable: 0 },
      { offset: 0x4, name: "CTRL", writable: 0x0000ffff, write: (v, p) => writes.push([v, p]) },
      { offset: 0x8, name: "STATUS", reset: 0xff, writable: 0, w1c: 0xff },
      { offset: 0xc, name: "NOW", read: () => 42 },
    ],
    (o) => unknown.push(o),
  );
  const out = new Uint8Array(8);
  regs.write(0x4, 4, new Uint8Array([1, 2, 3, 4]), 0);
  assert.equal(regs.get("CTRL"), 0x0201);
  assert.deepEqual(writes, [[0x0201, 0]]);
  regs.write(0x8, 1, new Uint8Array([0x0f]), 0);
  assert.equal(regs.get("STATUS"), 0xf0);
  regs.read(0x2, 4, out, 0); // straddles ID and CTRL
  assert.deepEqual([...out.subarray(0, 4)], [0x22, 0x11, 0x01, 0x02]);
  regs.read(0xc, 4, out, 0);
  assert.equal(out[0], 42);
  regs.read(0x10, 8, out, 0);
  assert.deepEqual([...out], [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(unknown, [0x10, 0x14]);
  assert.throws(() => regs.read(0x1e, 4, out, 0), VfioUserError);
  assert.throws(() => regs.read(0, 3, out, 0), VfioUserError);
});

test("DMA: a device holding a view of a window the client unmapped gets a clean error", () => {
  const fd = createMemfd("guest", 0x4000);
  const dma = new DmaSpace({ session: () => undefined, busMaster: () => true });
  dma.map({ flags: 3, offset: 0n, address: 0x10000n, size: 0x4000n }, fd);
  const view = dma.view(0x11000n, 0x1000, true);
  view.bytes[0] = 0x5a;
  view.check();
  dma.unmap({ argsz: 24, flags: 0, address: 0x10000n, size: 0x4000n });
  assert.equal(view.valid, false);
  assert.throws(
    () => view.check(),
    (e: unknown) => e instanceof DmaError && e.code === "EFAULT",
  );
  view.bytes[1] = 1; // lands in private zero pages: no fault, no guest memory touched
  assert.equal(view.bytes[0], 0);
  assert.throws(
    () => dma.read(0x11000n, new Uint8Array(4)),
    (e: unknown) => e instanceof DmaError && e.code === "EFAULT",
  );
});

test("DMA: without a client, fd-less windows fail cleanly; bus master off refuses all DMA", () => {
  let master = true;
  const dma = new DmaSpace({ session: () => undefined, busMaster: () => master });
  dma.map({ flags: 3, offset: 0n, address: 0x0n, size: 0x1000n }, undefined);
  assert.throws(
    () => dma.write(0n, new Uint8Array(4)),
    (e: unknown) => e instanceof DmaError && e.code === "ENOTCONN",
  );
  master = false;
  assert.throws(
    () => dma.read(0n, new Uint8Array(4)),
    (e: unknown) => e instanceof DmaError && e.code === "EPERM",
  );
  const fd = createMemfd("small", 0x1000);
  assert.throws(
    () => dma.map({ flags: 3, offset: 0n, address: 0x100000n, size: 0x2000n }, fd),
    (e: unknown) => e instanceof DmaError && e.code === "EINVAL",
  );
  closeFd(fd);
});

test("migration FSM: shortest paths, saving states only at the ends, forbidden arcs", () => {
  const saved: string[] = [];
  const m = new Migration(
    {
      save: () => new Uint8Array([1, 2, 3]),
      load: (s) => saved.push([...s].join(",")),
      stop: () => saved.push("stop"),
    },
    { preCopy: true, p2p: true },
  );
  m.set(MigState.STOP);
  assert.deepEqual(m.history, ["RUNNING -> RUNNING_P2P", "RUNNING_P2P -> STOP"]);
  m.set(MigState.STOP_COPY);
  assert.deepEqual([...m.read(10)], [1, 2, 3]);
  assert.throws(
    () => m.set(MigState.PRE_COPY),
    (e: unknown) => e instanceof VfioUserError && e.code === "EINVAL",
  );
  m.set(MigState.RESUMING); // STOP_COPY -> STOP -> RESUMING
  m.write(new Uint8Array([9, 9]));
  m.set(MigState.RUNNING);
  assert.ok(saved.includes("9,9"));
  assert.equal(m.state, MigState.RUNNING);
  const plain = new Migration({ save: () => new Uint8Array(0), load: () => {} });
  assert.throws(
    () => plain.set(MigState.PRE_COPY),
    (e: unknown) => e instanceof VfioUserError && e.code === "EINVAL",
  );
  assert.throws(
    () => plain.set(MigState.RUNNING_P2P),
    (e: unknown) => e instanceof VfioUserError && e.code === "EINVAL",
  );
  assert.throws(
    () => plain.read(1),
    (e: unknown) => e instanceof VfioUserError,
  );
  plain.set(MigState.STOP);
  assert.deepEqual(plain.history, ["RUNNING -> STOP"]);
});

test("one BAR mixes an mmap area with trapped registers; ROM and region type are described", () => {
  const fd = createMemfd("bar", 0x4000);
  const trapped: number[] = [];
  const dev = new PciDevice({
    identity: { vendorId: 0x1234, deviceId: 0x1, classCode: 0x030000 },
    bars: [
      {
        index: 0,
        size: 0x4000,
        kind: "mem32",
        memory: { fd, areas: [{ offset: 0x1000, size: 0x2000 }] },
        handler: {
          read: (_offset, count, out, at) => out.fill(0xab, at, at + count),
          write: (offset) => void trapped.push(offset),
        },
        regionType: { type: 0x80001234, subtype: 7 },
      },
    ],
    rom: new Uint8Array([0x55, 0xaa, 1]),
  });
  const info = dev.regionInfo(0);
  assert.deepEqual(info.sparseMmap, [{ offset: 0x1000, size: 0x2000 }]);
  assert.deepEqual(info.type, { type: 0x80001234, subtype: 7 });
  dev.config.writeValue(0x04, 2, 0x2);
  const out = new Uint8Array(4);
  dev.regionWrite(0, 0x1800, 4, new Uint8Array([1, 2, 3, 4]), 0);
  assert.deepEqual([...dev.barMemory(0).subarray(0x1800, 0x1804)], [1, 2, 3, 4], "inside the area: memory");
  dev.regionWrite(0, 0x3000, 4, new Uint8Array(4), 0);
  dev.regionRead(0, 0x10, 4, out, 0);
  assert.deepEqual(trapped, [0x3000], "outside it: the handler");
  assert.deepEqual([...out], [0xab, 0xab, 0xab, 0xab]);
  assert.equal(dev.regionInfo(PciRegion.ROM).size, 2048);
  dev.regionRead(PciRegion.ROM, 0, 4, out, 0);
  assert.deepEqual([...out], [0x55, 0xaa, 1, 0]);
  assert.throws(() => dev.regionWrite(PciRegion.ROM, 0, 4, out, 0), VfioUserError);
  assert.throws(() => dev.regionRead(0, 0x3ffe, 4, out, 0), VfioUserError);
  closeFd(fd);
});

test("DMA_UNMAP with a dirty bitmap returns the window's written pages", () => {
  const fd = createMemfd("guest", 0x10000);
  const dma = new DmaSpace({ session: () => undefined, busMaster: () => true });
  dma.map({ flags: 3, offset: 0n, address: 0x100000n, size: 0x10000n }, fd);
  dma.startLogging({ pageSize: 4096, ranges: [] });
  dma.write(0x103000n, new Uint8Array(10));
  dma.write(0x10f000n, new Uint8Array(4096));
  const bitmap = dma.unmap({
    argsz: 48,
    flags: DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    address: 0x100000n,
    size: 0x10000n,
    bitmap: { pgsize: 4096n, size: 8 },
  })!;
  assert.equal(new DataView(bitmap.buffer).getBigUint64(0, true), (1n << 3n) | (1n << 15n));
});
