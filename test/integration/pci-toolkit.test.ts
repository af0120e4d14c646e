/**
 * The toolkit's sample device (src/samples) driven by the project's own
 * vfio-user client over a real socket: config rules, gating, MSI-X with
 * masking and pending bits, INTx, DMA with and without fds, dirty logging,
 * the three resets, and migration between two server processes.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { EventFd, Mapping, closeFd, createMemfd } from "../../src/sys/index.js";
import {
  Client,
  DEVICE_FEATURE_GET,
  DEVICE_FEATURE_PROBE,
  DEVICE_FEATURE_SET,
  Feature,
  IRQ_SET_ACTION_MASK,
  IRQ_SET_ACTION_TRIGGER,
  IRQ_SET_ACTION_UNMASK,
  IRQ_SET_DATA_EVENTFD,
  IRQ_SET_DATA_NONE,
  MigState,
  PciIrq,
  PciRegion,
  VfioUserError,
} from "../../src/vfio-user/index.js";
import { describeConfig } from "../../src/pci/index.js";
import { Reg } from "../../src/samples/sample-device.js";
import { type ServerProcess, startSampleServer } from "../support/server-process.js";
import { quietLogger } from "../../src/base/index.js";

const quiet = { logger: quietLogger };
const errno = (code: string) => (e: unknown) => e instanceof VfioUserError && e.code === code;

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}
function rd(c: Client, region: number, offset: number, size: 1 | 2 | 4 = 4): number {
  const b = new Uint8Array(4);
  c.regionRead(region, offset, b.subarray(0, size));
  return new DataView(b.buffer).getUint32(0, true);
}
function wr(c: Client, region: number, offset: number, value: number, size: 1 | 2 | 4 = 4): void {
  c.regionWrite(region, offset, u32(value).subarray(0, size));
}
const cfgRead = (c: Client, o: number, s: 1 | 2 | 4 = 4) => rd(c, PciRegion.CONFIG, o, s);
const cfgWrite = (c: Client, o: number, v: number, s: 1 | 2 | 4 = 4) => wr(c, PciRegion.CONFIG, o, v, s);
const enable = (c: Client, command = 0x6) => cfgWrite(c, 0x04, command, 2);

function pattern(length: number, seed: number): Uint8Array {
  const p = new Uint8Array(length);
  for (let i = 0; i < length; i++) p[i] = (seed + i * 7) & 0xff;
  return p;
}

function ring(c: Client, address: bigint, length: number, command: number, seed = 0): void {
  wr(c, 0, Reg.DMA_LO, Number(address & 0xffffffffn));
  wr(c, 0, Reg.DMA_HI, Number(address >> 32n));
  wr(c, 0, Reg.DMA_LEN, length);
  wr(c, 0, Reg.SEED, seed);
  wr(c, 0, Reg.DOORBELL, command);
}

let server: ServerProcess;
let c: Client;
before(async () => {
  server = await startSampleServer();
});
after(async () => {
  await server.stop();
});

function connect(): Client {
  c = Client.connect(server.socketPath, quiet);
  c.reset();
  return c;
}

test("config space: identity, BAR sizing, read-only fields and the capability chain", () => {
  connect();
  const config = new Uint8Array(4096);
  c.regionRead(PciRegion.CONFIG, 0, config);
  const d = describeConfig(config);
  assert.equal(d.vendorId, 0x1234);
  assert.equal(d.deviceId, 0x4d53);
  assert.equal(d.classCode, 0xff0000);
  assert.deepEqual(
    d.capabilities.map((x) => x.name),
    ["Power Management", "MSI-X", "Express", "Vendor Specific"],
  );
  assert.equal(d.capabilities[1]!.details.vectors, 4);
  assert.equal(d.capabilities[1]!.details.pbaOffset, 0xc00);
  // Sizing: all-ones in, size mask and type bits out.
  cfgWrite(c, 0x10, 0xffffffff);
  assert.equal(cfgRead(c, 0x10), 0xfffff000);
  cfgWrite(c, 0x18, 0xffffffff);
  cfgWrite(c, 0x1c, 0xffffffff);
  assert.equal(cfgRead(c, 0x18), 0xfff0000c, "1 MiB, 64-bit, prefetchable");
  assert.equal(cfgRead(c, 0x1c), 0xffffffff);
  assert.equal(cfgRead(c, 0x14), 0, "BAR1 is the upper half of nothing: unimplemented BARs read 0");
  // Read-only: ids, class, capability pointer.
  cfgWrite(c, 0x00, 0xdeadbeef);
  cfgWrite(c, 0x08, 0xffffffff);
  cfgWrite(c, 0x34, 0xff, 1);
  assert.equal(cfgRead(c, 0x00), 0x4d531234);
  assert.equal(cfgRead(c, 0x08), 0xff000001);
  assert.equal(cfgRead(c, 0x34, 1), 0x40);
  // Writes must be 1, 2 or 4 bytes, aligned.
  assert.throws(() => c.regionWrite(PciRegion.CONFIG, 0x3d, new Uint8Array(2)), errno("EINVAL"));
  assert.throws(() => c.regionWrite(PciRegion.CONFIG, 0x10, new Uint8Array(3)), errno("EINVAL"));
  assert.throws(() => c.regionRead(PciRegion.CONFIG, 4094, new Uint8Array(4)), errno("EINVAL"));
  c.close();
});

test("the command register gates BAR decoding", () => {
  connect();
  assert.throws(() => rd(c, 0, Reg.ID), errno("EIO"), "memory decode off");
  enable(c, 0x2);
  assert.equal(rd(c, 0, Reg.ID), 0x4d475053);
  wr(c, 0, Reg.SCRATCH, 0x12345678);
  assert.equal(rd(c, 0, Reg.SCRATCH + 1, 2), 0x3456, "sub-dword reads at any offset");
  wr(c, 0, Reg.ID, 0);
  assert.equal(rd(c, 0, Reg.ID), 0x4d475053, "ID is read-only");
  assert.equal(rd(c, 0, 0x400), 0, "unknown registers read as zero");
  c.close();
});

test("MSI-X: vectors fire, masked vectors latch their pending bit and fire on unmask", () => {
  connect();
  enable(c);
  const evs = [0, 1, 2, 3].map(() => new EventFd(undefined, { nonBlocking: true }));
  c.setIrqs(
    { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSIX, start: 0, count: 4 },
    evs.map((e) => e.fd),
  );
  ring(c, 0n, 0, 0);
  assert.equal(evs[0]!.read(), 1, "the table has not been touched: QEMU-style, the VMM virtualizes it");
  // A client that forwards the table: the guest unmasks vector 0, then masks it.
  wr(c, 0, 0x800 + 12, 0);
  wr(c, 0, 0x800 + 12, 1);
  ring(c, 0n, 0, 0);
  assert.equal(evs[0]!.read(), 0, "masked: not delivered");
  assert.equal(rd(c, 0, 0xc00) & 1, 1, "pending bit set in the PBA");
  wr(c, 0, 0x800 + 12, 0);
  assert.equal(evs[0]!.read(), 1, "delivered on unmask");
  assert.equal(rd(c, 0, 0xc00) & 1, 0, "pending bit cleared");
  // Function mask (MSI-X control bit 14) masks every vector.
  const msixCap = 0x48; // after PM (0x40, 8 bytes)
  assert.equal(cfgRead(c, msixCap, 1), 0x11);
  cfgWrite(c, msixCap + 2, 0x4000, 2);
  ring(c, 0n, 0, 0);
  assert.equal(evs[0]!.read(), 0);
  cfgWrite(c, msixCap + 2, 0x0000, 2);
  assert.equal(evs[0]!.read(), 1);
  // The VMM's own mask (SET_IRQS MASK/UNMASK) latches the same way.
  c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, index: PciIrq.MSIX, start: 0, count: 1 });
  ring(c, 0n, 0, 0);
  assert.equal(evs[0]!.read(), 0);
  c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, index: PciIrq.MSIX, start: 0, count: 1 });
  assert.equal(evs[0]!.read(), 1);
  // Loopback trigger of vector 2 from the client (its table entry still masks it).
  c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSIX, start: 2, count: 1 });
  assert.equal(evs[2]!.read(), 0);
  wr(c, 0, 0x800 + 2 * 16 + 12, 0);
  assert.equal(evs[2]!.read(), 1, "pending vector 2 fires when the guest unmasks it");
  c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSIX, start: 2, count: 1 });
  assert.equal(evs[2]!.read(), 1);
  assert.throws(
    () =>
      c.setIrqs(
        { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSIX, start: 3, count: 2 },
        [evs[0]!.fd, evs[1]!.fd],
      ),
    errno("EINVAL"),
  );
  c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSIX, start: 0, count: 0 });
  for (const e of evs) e.close();
  c.close();
});

test("INTx is automasked after it fires until the VMM unmasks it, and DisINTx holds it", () => {
  connect();
  enable(c);
  const ev = new EventFd(undefined, { nonBlocking: true });
  c.setIrqs(
    { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: PciIrq.INTX, start: 0, count: 1 },
    [ev.fd],
  );
  ring(c, 0n, 0, 0);
  assert.equal(ev.read(), 1);
  ring(c, 0n, 0, 0);
  assert.equal(ev.read(), 0, "automasked");
  c.setIrqs({ flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, index: PciIrq.INTX, start: 0, count: 1 });
  assert.equal(ev.read(), 1, "the latched interrupt fires on unmask");
  enable(c, 0x6 | 0x400);
  ring(c, 0n, 0, 0);
  assert.equal(ev.read(), 0, "INTx disabled in the command register");
  ev.close();
  c.close();
});

test("DMA: fd-backed and message-based, scatter across windows, bus master and permission checks", () => {
  const guest = new Uint8Array(0x4000);
  const base = 0x1001_0000n;
  c = Client.connect(server.socketPath, {
    ...quiet,
    memory: {
      read: (a, out) => out.set(guest.subarray(Number(a - base), Number(a - base) + out.length)),
      write: (a, d) => guest.set(d, Number(a - base)),
    },
  });
  c.reset();
  enable(c, 0x2);
  const memfd = createMemfd("ram", 0x10000);
  const ram = Mapping.ofFd(memfd, 0x10000);
  // Two adjacent windows: one backed by a memfd, then one the client serves by messages.
  c.dmaMap({ flags: 3, offset: 0n, address: 0x1000_0000n, size: 0x10000n }, memfd);
  c.dmaMap({ flags: 3, offset: 0n, address: 0x1001_0000n, size: 0x4000n });
  ring(c, 0x1000_0000n, 16, 1, 1);
  assert.equal(rd(c, 0, Reg.ERROR), 1, "EPERM: bus mastering is off");
  enable(c, 0x6);
  // 0x100 bytes straddling the fd window's end and the message-based window's start.
  ring(c, 0x1000_ff80n, 0x100, 1, 5);
  assert.equal(rd(c, 0, Reg.ERROR), 0);
  const want = pattern(0x100, 5);
  assert.deepEqual(ram.bytes.subarray(0xff80, 0x10000), want.subarray(0, 0x80));
  assert.deepEqual(guest.subarray(0, 0x80), want.subarray(0x80));
  ring(c, 0x5000_0000n, 16, 1);
  assert.equal(rd(c, 0, Reg.ERROR), 14, "EFAULT: nothing mapped there");
  c.dmaUnmap(0x1000_0000n, 0x10000n);
  c.dmaMap({ flags: 1, offset: 0n, address: 0x1000_0000n, size: 0x1000n }, memfd);
  ring(c, 0x1000_0000n, 16, 1);
  assert.equal(rd(c, 0, Reg.ERROR), 1, "EPERM: read-only mapping");
  assert.throws(
    () => c.dmaMap({ flags: 3, offset: 0n, address: 0x1000_0000n, size: 0x1000n }),
    errno("EINVAL"),
    "the same range again, but another backing and access (libvfio-user: EINVAL)",
  );
  assert.throws(
    () => c.dmaMap({ flags: 1, offset: 0n, address: 0x1000_0000n, size: 0x2000n }, memfd),
    errno("EEXIST"),
    "overlaps a mapping",
  );
  assert.throws(
    () => c.dmaMap({ flags: 3, offset: 0n, address: 0x3000_0001n, size: 0x1000n }),
    errno("EINVAL"),
  );
  assert.throws(
    () => c.dmaMap({ flags: 3, offset: 0n, address: 0x3000_0000n, size: 0x100000n }, memfd),
    errno("EINVAL"),
    "past the file's end",
  );
  assert.throws(() => c.dmaUnmap(0x1000_0000n, 0x800n), errno("EINVAL"), "cuts a mapping in two");
  c.dmaUnmap(0x7000_0000n, 0x1000n); // nothing there: a no-op, as kernel VFIO
  c.dmaUnmap(0n, 0n, { all: true });
  ram.unmap();
  closeFd(memfd);
  c.close();
});

test("dirty-page logging reports exactly the pages the device wrote, then clears them", () => {
  connect();
  enable(c);
  const memfd = createMemfd("ram", 0x40000);
  c.dmaMap({ flags: 3, offset: 0n, address: 0x4000_0000n, size: 0x40000n }, memfd);
  const start = new Uint8Array(16);
  new DataView(start.buffer).setBigUint64(0, 4096n, true);
  c.feature(Feature.DMA_LOGGING_START | DEVICE_FEATURE_PROBE | DEVICE_FEATURE_SET);
  c.feature(Feature.DMA_LOGGING_START | DEVICE_FEATURE_SET, start);
  ring(c, 0x4000_1ff0n, 0x20, 1); // touches pages 1 and 2
  ring(c, 0x4000_9000n, 0x10, 1); // page 9
  const req = new Uint8Array(24);
  const v = new DataView(req.buffer);
  v.setBigUint64(0, 0x4000_0000n, true);
  v.setBigUint64(8, 0x40000n, true);
  v.setBigUint64(16, 4096n, true);
  const report = () => {
    const r = c.feature(Feature.DMA_LOGGING_REPORT | DEVICE_FEATURE_GET, req, 24 + 8);
    return new DataView(r.buffer, r.byteOffset).getBigUint64(24, true);
  };
  assert.equal(report(), (1n << 1n) | (1n << 2n) | (1n << 9n));
  assert.equal(report(), 0n, "reported pages are cleared");
  c.feature(Feature.DMA_LOGGING_STOP | DEVICE_FEATURE_SET);
  assert.throws(report, errno("EINVAL"));
  c.dmaUnmap(0n, 0n, { all: true });
  closeFd(memfd);
  c.close();
});

test("resets: DEVICE_RESET, PCIe FLR and PM D3hot→D0 restore the power-on state", () => {
  connect();
  const resetVia = (how: () => void) => {
    enable(c);
    cfgWrite(c, 0x10, 0xfe000000);
    wr(c, 0, Reg.SCRATCH, 0xabcd);
    how();
    assert.equal(cfgRead(c, 0x04, 2), 0, "command cleared");
    assert.equal(cfgRead(c, 0x10), 0, "BAR address cleared");
    enable(c);
    assert.equal(rd(c, 0, Reg.SCRATCH), 0, "device registers reset");
    assert.equal(rd(c, 0, Reg.ID), 0x4d475053);
  };
  resetVia(() => c.reset());
  const pcie = 0x48 + 12; // after PM (8) and MSI-X (12)
  assert.equal(cfgRead(c, pcie, 1), 0x10);
  assert.equal((cfgRead(c, pcie + 4) >>> 28) & 1, 1, "FLR capable");
  resetVia(() => cfgWrite(c, pcie + 8, 0x8000, 2));
  assert.equal(cfgRead(c, pcie + 8, 2) & 0x8000, 0, "Initiate FLR reads as 0");
  resetVia(() => {
    cfgWrite(c, 0x44, 3, 2); // PMCSR: D3hot
    assert.throws(() => rd(c, 0, Reg.ID), errno("EIO"), "no BAR access in D3hot");
    cfgWrite(c, 0x44, 0, 2); // back to D0: a soft reset
  });
  cfgWrite(c, 0x44, 1, 2);
  assert.equal(cfgRead(c, 0x44, 2) & 3, 0, "D1 is unsupported: the write is discarded");
  c.close();
});

test("migration v2: state machine and the data stream between two servers", async () => {
  const target = await startSampleServer();
  try {
    const src = connect();
    const dst = Client.connect(target.socketPath, quiet);
    dst.reset();
    const state = (client: Client) => {
      const r = client.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_GET, new Uint8Array(0), 8);
      return new DataView(r.buffer, r.byteOffset).getUint32(0, true);
    };
    const set = (client: Client, s: number) =>
      client.feature(Feature.MIG_DEVICE_STATE | DEVICE_FEATURE_SET, u32(s), 8);
    const flags = c.feature(Feature.MIGRATION | DEVICE_FEATURE_GET, new Uint8Array(0), 8);
    assert.equal(flags[0], 0b111, "STOP_COPY, P2P and PRE_COPY");
    enable(src);
    wr(src, 0, Reg.SCRATCH, 0xfeedf00d);
    src.regionWrite(2, 0x1234, pattern(100, 9));
    assert.equal(state(src), MigState.RUNNING);
    set(src, MigState.PRE_COPY);
    set(src, MigState.STOP_COPY); // PRE_COPY -> STOP_COPY directly
    const chunks: Uint8Array[] = [];
    for (let chunk = src.migrationRead(65536); ; chunk = src.migrationRead(65536)) {
      chunks.push(chunk);
      if (chunk.length < 65536) break;
    }
    assert.throws(() => set(src, MigState.PRE_COPY), errno("EINVAL"), "STOP_COPY -> PRE_COPY is not allowed");
    assert.throws(() => set(src, 42), errno("EINVAL"));
    set(dst, MigState.RESUMING); // RUNNING -> (P2P) -> STOP -> RESUMING
    for (const chunk of chunks) dst.migrationWrite(chunk);
    set(dst, MigState.RUNNING); // RESUMING -> STOP (load) -> P2P -> RUNNING
    assert.equal(state(dst), MigState.RUNNING);
    enable(dst);
    assert.equal(rd(dst, 0, Reg.SCRATCH), 0xfeedf00d);
    const back = new Uint8Array(100);
    dst.regionRead(2, 0x1234, back);
    assert.deepEqual(back, pattern(100, 9));
    // A truncated stream fails the load and leaves the device in ERROR until reset.
    set(dst, MigState.RESUMING);
    dst.migrationWrite(chunks[0]!.subarray(0, 10));
    assert.throws(() => set(dst, MigState.STOP), errno("EIO"));
    assert.equal(state(dst), MigState.ERROR);
    assert.throws(() => set(dst, MigState.RUNNING), errno("EINVAL"));
    dst.reset();
    assert.equal(state(dst), MigState.RUNNING);
    src.close();
    dst.close();
  } finally {
    await target.stop();
  }
});
