import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { EventFd, Mapping, closeFd, createMemfd } from "../../src/sys/index.js";
import {
  Client,
  DEVICE_FEATURE_GET,
  DEVICE_FEATURE_SET,
  DEVICE_FLAGS_PCI,
  DMA_FLAG_READ,
  DMA_FLAG_WRITE,
  Feature,
  IRQ_SET_ACTION_TRIGGER,
  IRQ_SET_DATA_EVENTFD,
  IRQ_SET_DATA_NONE,
  MigState,
  PciIrq,
  PciRegion,
  REGION_INFO_FLAG_MMAP,
  VfioUserError,
} from "../../src/vfio-user/index.js";
import { SAMPLE_DEVICE, SAMPLE_ID_REGISTER, SAMPLE_VENDOR } from "../fixtures/sample-device.js";
import { type ServerProcess, startFixtureServer } from "../support/server-process.js";
import { quietLogger } from "../../src/base/index.js";

const quiet = { logger: quietLogger };

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

function readU32(c: Client, region: number, offset: number): number {
  const out = new Uint8Array(4);
  c.regionRead(region, offset, out);
  return new DataView(out.buffer).getUint32(0, true);
}

/** Programs the sample device's DMA registers and rings its doorbell. */
function doorbell(c: Client, address: bigint, length: number, seed: number, op: 1 | 2, posted = false): void {
  c.regionWrite(PciRegion.BAR0, 0x10, u32(Number(address & 0xffffffffn)));
  c.regionWrite(PciRegion.BAR0, 0x14, u32(Number(address >> 32n)));
  c.regionWrite(PciRegion.BAR0, 0x18, u32(length));
  c.regionWrite(PciRegion.BAR0, 0x1c, u32(seed));
  c.regionWrite(PciRegion.BAR0, 0x08, u32(op), { posted });
}

function expectedPattern(length: number, seed: number): Uint8Array {
  const p = new Uint8Array(length);
  for (let i = 0; i < length; i++) p[i] = (seed + i * 7) & 0xff;
  return p;
}

for (const twin of [false, true]) {
  describe(`vfio-user over a real socket${twin ? " (twin-socket mode)" : ""}`, () => {
    let server: ServerProcess;
    before(async () => {
      server = await startFixtureServer("serve-sample.js", twin ? ["--twin"] : []);
    });
    after(async () => {
      await server.stop();
    });

    test("VERSION negotiates capabilities", () => {
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin, writeMultiple: true });
      assert.equal(c.version.major, 0);
      assert.equal(c.server.maxDataXferSize, 1 << 20);
      assert.equal(c.server.maxMsgFds, 16);
      assert.equal(c.server.writeMultiple, true);
      assert.equal(c.twinSocket, twin);
      c.close();
    });

    test("device, region and IRQ info round-trip", () => {
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin });
      const info = c.getDeviceInfo();
      assert.equal(info.flags & DEVICE_FLAGS_PCI, DEVICE_FLAGS_PCI);
      assert.equal(info.numRegions, 9);
      assert.equal(info.numIrqs, 5);
      const config = c.getRegionInfo(PciRegion.CONFIG);
      assert.equal(config.size, 256);
      assert.equal(config.fd, undefined);
      const bar2 = c.getRegionInfo(PciRegion.BAR2);
      assert.equal(bar2.flags & REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_MMAP);
      assert.deepEqual(bar2.sparseMmap, [{ offset: 0, size: 0x100000 }]);
      assert.ok(bar2.fd !== undefined, "the mmap fd comes with the reply");
      // Pass-through: bytes written through our mapping are what the device sees.
      const m = Mapping.ofFd(bar2.fd, bar2.size);
      m.bytes.set([1, 2, 3, 4], 0x100);
      const back = new Uint8Array(4);
      c.regionRead(PciRegion.BAR2, 0x100, back);
      assert.deepEqual([...back], [1, 2, 3, 4]);
      m.unmap();
      closeFd(bar2.fd);
      assert.deepEqual(c.getIrqInfo(PciIrq.MSI), { index: 1, flags: 1, count: 1 });
      assert.throws(
        () => c.getRegionInfo(99),
        (e: unknown) => e instanceof VfioUserError && e.code === "EINVAL",
      );
      const io = c.getRegionIoFds(PciRegion.BAR0);
      assert.equal(io.subRegions.length, 1);
      assert.equal(io.subRegions[0]!.offset, 8);
      assert.equal(io.fds.length, 1);
      for (const fd of io.fds) closeFd(fd);
      c.close();
    });

    test("config space reads, writes and read-only bits", () => {
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin });
      assert.equal(readU32(c, PciRegion.CONFIG, 0), (SAMPLE_DEVICE << 16) | SAMPLE_VENDOR);
      c.regionWrite(PciRegion.CONFIG, 0, u32(0xffffffff)); // ids are read-only
      assert.equal(readU32(c, PciRegion.CONFIG, 0), (SAMPLE_DEVICE << 16) | SAMPLE_VENDOR);
      c.regionWrite(PciRegion.CONFIG, 0x10, u32(0xffffffff)); // BAR0 sizing
      assert.equal(readU32(c, PciRegion.CONFIG, 0x10), 0xfffff000);
      assert.equal(readU32(c, PciRegion.BAR0, 0), SAMPLE_ID_REGISTER);
      c.reset();
      assert.equal(readU32(c, PciRegion.CONFIG, 0x10), 0);
      c.close();
    });

    test("DMA_MAP with a memfd: the device writes through its mapping, we see the bytes", () => {
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin });
      const size = 1 << 20;
      const memfd = createMemfd("guest-ram", size);
      const ram = Mapping.ofFd(memfd, size);
      c.dmaMap(
        { flags: DMA_FLAG_READ | DMA_FLAG_WRITE, offset: 0n, address: 0x100000n, size: BigInt(size) },
        memfd,
      );
      doorbell(c, 0x100000n + 0x2000n, 4096, 9, 1);
      assert.deepEqual(ram.bytes.subarray(0x2000, 0x2000 + 4096), expectedPattern(4096, 9));
      // And the other way: the device reads what we put there.
      ram.bytes.set(expectedPattern(100, 3), 0x5000);
      doorbell(c, 0x105000n, 100, 0, 2);
      let sum = 0;
      expectedPattern(100, 3).forEach((b, i) => (sum = (sum + b * (i + 1)) >>> 0));
      assert.equal(readU32(c, PciRegion.BAR0, 0x20), sum);
      assert.throws(
        () => c.dmaMap({ flags: 3, offset: 0n, address: 0x100000n, size: 4096n }),
        (e: unknown) => e instanceof VfioUserError && e.code === "EEXIST",
      );
      c.dmaUnmap(0x100000n, BigInt(size));
      assert.throws(
        () => doorbell(c, 0x102000n, 16, 1, 1),
        (e: unknown) => e instanceof VfioUserError && e.code === "EFAULT",
      );
      ram.unmap();
      closeFd(memfd);
      c.close();
    });

    test("SET_IRQS with an eventfd: the device triggers, we read the counter", () => {
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin });
      const ev = new EventFd(undefined, { nonBlocking: true });
      c.setIrqs(
        { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSI, start: 0, count: 1 },
        [ev.fd],
      );
      c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSI, start: 0, count: 1 });
      assert.equal(ev.read(), 1, "a client-side trigger reaches our eventfd through the server");
      c.regionWrite(PciRegion.BAR0, 0x18, u32(0));
      c.regionWrite(PciRegion.BAR0, 0x08, u32(3)); // doorbell with no DMA still raises MSI
      assert.equal(ev.read(), 1);
      assert.throws(
        () =>
          c.setIrqs(
            { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSIX, start: 0, count: 1 },
            [ev.fd],
          ),
        (e: unknown) => e instanceof VfioUserError && e.code === "EINVAL",
      );
      ev.close();
      c.close();
    });

    test("DMA_READ/DMA_WRITE initiated by the server when no fd was given", () => {
      const guest = new Uint8Array(64 * 1024);
      const base = 0x4000_0000n;
      const memory = {
        read: (address: bigint, out: Uint8Array) =>
          out.set(guest.subarray(Number(address - base), Number(address - base) + out.length)),
        write: (address: bigint, data: Uint8Array) => guest.set(data, Number(address - base)),
      };
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin, memory });
      c.dmaMap({
        flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
        offset: 0n,
        address: base,
        size: BigInt(guest.length),
      });
      // A write larger than a page and not page-aligned.
      doorbell(c, base + 0x123n, 5000, 77, 1);
      assert.deepEqual(guest.subarray(0x123, 0x123 + 5000), expectedPattern(5000, 77));
      guest.set(expectedPattern(300, 1), 0x8000);
      doorbell(c, base + 0x8000n, 300, 0, 2);
      let sum = 0;
      expectedPattern(300, 1).forEach((b, i) => (sum = (sum + b * (i + 1)) >>> 0));
      assert.equal(readU32(c, PciRegion.BAR0, 0x20), sum);
      c.dmaUnmap(0n, 0n, { all: true });
      c.close();
    });

    test("a posted doorbell's DMA is served while the client is idle", async () => {
      const guest = new Uint8Array(8192);
      const base = 0x8000_0000n;
      const memory = {
        read: (address: bigint, out: Uint8Array) =>
          out.set(guest.subarray(Number(address - base), Number(address - base) + out.length)),
        write: (address: bigint, data: Uint8Array) => guest.set(data, Number(address - base)),
      };
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin, memory });
      c.dmaMap({ flags: 3, offset: 0n, address: base, size: 8192n });
      c.startService();
      doorbell(c, base, 1000, 5, 1, true);
      for (let i = 0; i < 200 && guest[999] !== expectedPattern(1000, 5)[999]; i++)
        await new Promise((r) => setTimeout(r, 5));
      assert.deepEqual(guest.subarray(0, 1000), expectedPattern(1000, 5));
      c.stopService();
      c.close();
    });

    test("a VMM that reconnects right after closing finds the device free, not held by its dead session", () => {
      const guest = new Uint8Array(8192);
      const memory = { read: (_: bigint, out: Uint8Array) => out.fill(1), write: () => {} };
      for (let i = 0; i < 20; i++) {
        const a = Client.connect(server.socketPath, { ...quiet, twinSocket: twin, memory });
        a.dmaMap({ flags: 3, offset: 0n, address: 0x8000_0000n, size: BigInt(guest.length) });
        a.startService();
        // Its last message (a posted doorbell whose DMA it will never answer) and its hang-up arrive together.
        doorbell(a, 0x8000_0000n, 1000, i, 1, true);
        a.close();
        const b = Client.connect(server.socketPath, { ...quiet, twinSocket: twin });
        b.regionWrite(PciRegion.BAR0, 0x48, u32(i + 1)); // an owner's request (EBUSY for an observer)
        assert.equal(readU32(b, PciRegion.BAR0, 0x48), i + 1);
        b.close();
      }
    });

    test("REGION_WRITE_MULTI, large transfers, reset and migration data round-trip", () => {
      const c = Client.connect(server.socketPath, { ...quiet, twinSocket: twin, writeMultiple: true });
      const n = c.regionWriteMulti([
        { offset: 0x40, region: PciRegion.BAR0, count: 4, data: u32(0xaabbccdd) },
        { offset: 0x44, region: PciRegion.BAR0, count: 2, data: new Uint8Array([1, 2]) },
      ]);
      assert.equal(n, 2);
      assert.equal(readU32(c, PciRegion.BAR0, 0x40), 0xaabbccdd);
      assert.equal(readU32(c, PciRegion.BAR0, 0x44), 0x0201);
      // 64 KiB through REGION_WRITE/READ.
      const big = expectedPattern(0x10000, 42);
      c.regionWrite(PciRegion.BAR2, 0, big);
      const back = new Uint8Array(0x10000);
      c.regionRead(PciRegion.BAR2, 0, back);
      assert.deepEqual(back, big);
      // Migration: STOP_COPY out, RESUMING in.
      const migFlags = c.feature(Feature.MIGRATION | DEVICE_FEATURE_GET, new Uint8Array(0), 8);
      assert.equal(migFlags[0]! & 1, 1);
      const state = (s: number) => {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setUint32(0, s, true);
        return b;
      };
      c.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_SET, state(MigState.STOP));
      c.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_SET, state(MigState.STOP_COPY));
      const chunks: Uint8Array[] = [];
      for (;;) {
        const chunk = c.migrationRead(1000);
        chunks.push(chunk);
        if (chunk.length < 1000) break;
      }
      const saved = Buffer.concat(chunks);
      assert.equal(saved.length, 4096);
      c.regionWrite(PciRegion.BAR0, 0x40, u32(0));
      c.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_SET, state(MigState.STOP));
      c.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_SET, state(MigState.RESUMING));
      c.migrationWrite(saved.subarray(0, 2000));
      c.migrationWrite(saved.subarray(2000));
      c.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_SET, state(MigState.STOP));
      assert.equal(readU32(c, PciRegion.BAR0, 0x40), 0xaabbccdd, "restored from the migration stream");
      const st = c.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_GET, new Uint8Array(0), 8);
      assert.equal(new DataView(st.buffer).getUint32(0, true), MigState.STOP);
      assert.throws(
        () => c.feature(Feature.DMA_LOGGING_START | DEVICE_FEATURE_SET),
        (e: unknown) => e instanceof VfioUserError && e.code === "ENOTTY",
      );
      c.reset();
      assert.equal(readU32(c, PciRegion.BAR0, 0x40), 0);
      c.close();
    });
  });
}
