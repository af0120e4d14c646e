/**
 * Bounded, validated allocations and released mappings (issue 12), through a
 * real socket against the PCI toolkit's sample device: the daemon's VmSize,
 * RSS and fd count are read from /proc/<pid>/ before and after the abuse.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Mapping, closeFd, createMemfd } from "../../src/sys/index.js";
import {
  Client,
  DEVICE_FEATURE_GET,
  DEVICE_FEATURE_SET,
  Errno,
  Feature,
  PciRegion,
  VfioUserError,
} from "../../src/vfio-user/index.js";
import { Reg, SampleDevice } from "../../src/samples/sample-device.js";
import { Mediator } from "../../src/mediator/index.js";
import { VfioUserMpt } from "../../src/hypervisor/vfio-user.js";
import { quietLogger } from "../../src/base/index.js";
import { type ServerProcess, startSampleServer } from "../support/server-process.js";
import { mapUnmapCycles, statusKiB } from "../support/vmm-scenarios.js";

const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };
const GiB = 1 << 30;

let server: ServerProcess;
before(async () => {
  server = await startSampleServer();
});
after(async () => {
  await server.stop();
});

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

function fields(...values: [bits: 32 | 64, value: number | bigint][]): Uint8Array {
  return new Uint8Array(
    Buffer.concat(
      values.map(([bits, v]) => {
        const b = Buffer.alloc(bits / 8);
        if (bits === 32) b.writeUInt32LE(Number(v) >>> 0);
        else b.writeBigUInt64LE(BigInt(v));
        return b;
      }),
    ),
  );
}

function expectErrno(fn: () => unknown, errno: number, what: string): void {
  assert.throws(fn, (e) => e instanceof VfioUserError && e.errno === errno, what);
}

const pid = () => server.child.pid!;

test("dirty-log REPORT is validated before anything is allocated; START is all or nothing", () => {
  const c = Client.connect(server.socketPath, quiet);
  const memfd = createMemfd("guest", 0x10000);
  c.dmaMap({ flags: 3, offset: 0n, address: 0x100000n, size: 0x10000n }, memfd);
  closeFd(memfd);
  const start = (ranges: [number, number][]) =>
    c.feature(
      DEVICE_FEATURE_SET | Feature.DMA_LOGGING_START,
      fields(
        [64, 4096],
        [32, ranges.length],
        [32, 0],
        ...ranges.flatMap(([a, l]): [64, number][] => [
          [64, a],
          [64, l],
        ]),
      ),
    );
  const report = (iova: number | bigint, length: number | bigint, pageSize: number, room: number) =>
    c.feature(
      DEVICE_FEATURE_GET | Feature.DMA_LOGGING_REPORT,
      fields([64, iova], [64, length], [64, pageSize]),
      room,
    );
  // One mapped range and one that is not: refused, and logging stays off.
  expectErrno(
    () =>
      start([
        [0x100000, 0x10000],
        [0x900000, 0x1000],
      ]),
    Errno.EINVAL,
    "START with an unmapped range",
  );
  expectErrno(() => report(0x100000, 0x10000, 4096, 24 + 8), Errno.EINVAL, "logging must still be off");
  start([[0x100000, 0x10000]]);
  const rss0 = statusKiB(pid(), "VmRSS");
  // A 512 MiB bitmap asked for in a 40-byte request: refused before any allocation.
  const t0 = performance.now();
  expectErrno(() => report(0x100000, 2n ** 44n, 4096, 0xfffffff0), Errno.EINVAL, "a report past the mapping");
  expectErrno(
    () => report(0x100000, 0x10000, 4095, 64),
    Errno.EINVAL,
    "a page size that is not a power of two",
  );
  expectErrno(() => report(0x100000, 0x10000, 4096, 8), Errno.EINVAL, "argsz too small for the bitmap");
  const ms = performance.now() - t0;
  const rss1 = statusKiB(pid(), "VmRSS");
  assert.ok(rss1 - rss0 < 64 * 1024, `RSS grew ${rss1 - rss0} KiB`);
  assert.ok(ms < 1000, `refusals took ${ms.toFixed(1)} ms`);
  // A valid one still works: the sample device writes a page, the report shows it.
  c.regionWrite(PciRegion.CONFIG, 4, new Uint8Array([0x06, 0]));
  c.regionWrite(PciRegion.BAR0, Reg.DMA_LO, u32(0x103000));
  c.regionWrite(PciRegion.BAR0, Reg.DMA_HI, u32(0));
  c.regionWrite(PciRegion.BAR0, Reg.DMA_LEN, u32(16));
  c.regionWrite(PciRegion.BAR0, Reg.DOORBELL, u32(1));
  const data = report(0x100000, 0x10000, 4096, 24 + 8);
  assert.equal(Buffer.from(data).readBigUInt64LE(24), 1n << 3n);
  c.feature(DEVICE_FEATURE_SET | Feature.DMA_LOGGING_STOP);
  c.close();
});

test("a 5 GiB DMA window (sparse memfd) maps, the device writes past 4 GiB, and unmapping gives the address space back", () => {
  const vm0 = statusKiB(pid(), "VmSize");
  const c = Client.connect(server.socketPath, quiet);
  const size = 5 * GiB;
  const memfd = createMemfd("big-guest", size); // ftruncate only: no memory is used
  const base = 0x1_0000_0000n;
  c.dmaMap({ flags: 3, offset: 0n, address: base, size: BigInt(size) }, memfd);
  assert.ok(statusKiB(pid(), "VmSize") - vm0 >= (size >> 10) - 1024, "the window is mapped");
  // The device writes 64 bytes straddling the 4 GiB point of the window.
  const at = base + BigInt(4 * GiB) - 32n;
  c.regionWrite(PciRegion.CONFIG, 4, new Uint8Array([0x06, 0]));
  c.regionWrite(PciRegion.BAR0, Reg.DMA_LO, u32(Number(at & 0xffffffffn)));
  c.regionWrite(PciRegion.BAR0, Reg.DMA_HI, u32(Number(at >> 32n)));
  c.regionWrite(PciRegion.BAR0, Reg.DMA_LEN, u32(64));
  c.regionWrite(PciRegion.BAR0, Reg.SEED, u32(9));
  c.regionWrite(PciRegion.BAR0, Reg.DOORBELL, u32(1));
  const err = new Uint8Array(4);
  c.regionRead(PciRegion.BAR0, Reg.ERROR, err);
  assert.deepEqual([...err], [0, 0, 0, 0], "the device's DMA failed");
  const view = Mapping.ofFd(memfd, 8192, { offset: 4 * GiB - 4096 });
  const want = Array.from({ length: 64 }, (_, i) => (9 + i * 7) & 0xff);
  assert.deepEqual([...view.bytes.subarray(4096 - 32, 4096 + 32)], want);
  view.unmap();
  c.dmaUnmap(base, BigInt(size));
  closeFd(memfd);
  assert.ok(statusKiB(pid(), "VmSize") - vm0 < 64 * 1024, "the window's address space was not given back");
  c.close();
});

test("10,000 DMA_MAP/DMA_UNMAP cycles of 4 GiB windows leave VmSize and the fd count at their baseline", (t) => {
  const c = Client.connect(server.socketPath, quiet);
  mapUnmapCycles(c, 1);
  const vm0 = statusKiB(pid(), "VmSize");
  const fds0 = server.fdCount();
  const ms = mapUnmapCycles(c, 10_000);
  const vm1 = statusKiB(pid(), "VmSize");
  const fds1 = server.fdCount();
  t.diagnostic(`10,000 cycles in ${ms.toFixed(0)} ms; VmSize ${vm0} -> ${vm1} KiB; fds ${fds0} -> ${fds1}`);
  assert.equal(fds1, fds0, "fds leaked");
  assert.ok(vm1 - vm0 < 64 * 1024, `VmSize grew ${vm1 - vm0} KiB`);
  c.close();
});

const mappings = () => readFileSync("/proc/self/maps", "utf8").split("\n").length;

test("2,000 vGPU create/remove cycles leave the mapping count where it was (BAR0 is unmapped on removal)", (t) => {
  const mediator = new Mediator({
    mpt: (device, hooks) => new VfioUserMpt(device, hooks),
    logger: quietLogger,
  });
  const cycle = () => mediator.remove(mediator.create(mediator.types[0]!.name).uuid);
  for (let i = 0; i < 20; i++) cycle(); // warm up allocators
  const before = mappings();
  const vm0 = statusKiB(process.pid, "VmSize");
  for (let i = 0; i < 2000; i++) cycle();
  const after = mappings();
  const vm1 = statusKiB(process.pid, "VmSize");
  t.diagnostic(`mappings ${before} -> ${after}; VmSize ${vm0} -> ${vm1} KiB`);
  // A leak is one mapping per cycle (2,000); the JS heap and thread arenas move the
  // count by a few dozen on their own (195 from 176 was seen once with no leak).
  assert.ok(after - before < 100, `mappings grew from ${before} to ${after}`);
});

test("a window the device holds a view of is revoked at DMA_UNMAP and unmapped at the end of the workload", () => {
  const device = new SampleDevice();
  const forgotten: number[] = [];
  const mpt = new VfioUserMpt(device.pci, { forgetGuestPages: () => forgotten.push(1) });
  device.pci.config.write(4, 2, new Uint8Array([0x06, 0]), 0);
  const memfd = createMemfd("viewed", 0x10000);
  const before = mappings();
  device.pci.dmaMap({ flags: 3, offset: 0n, address: 0x100000n, size: 0x10000n }, memfd);
  const page = mpt.mapGuestPage(0x101000n)!;
  page[0] = 0xaa;
  device.pci.dmaUnmap({ argsz: 24, flags: 0, address: 0x100000n, size: 0x10000n });
  assert.equal(device.pci.dma.staleCount, 1);
  assert.equal(page[0], 0, "a late access sees a revoked page, not the guest's");
  mpt.release(); // the workload ended
  assert.equal(device.pci.dma.staleCount, 0);
  assert.equal(forgotten.length, 1, "the mediator was told to drop its cached page views first");
  assert.equal(mappings(), before);
  device.pci.close();
});
