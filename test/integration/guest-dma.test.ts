/**
 * Issue 12's "no waiting on one client", mediator side, through the real
 * daemon: a vGPU whose guest RAM its VMM serves only by messages (no fd, as
 * Xen device models and QEMU without share=on do) stages the pages its work
 * reaches with batched asynchronous DMA and waits off the engine; a VMM that
 * sits on those requests parks only its own vGPU; a reply that never comes, or
 * a refusal, stops that vGPU alone; what the engine wrote goes back byte-exact
 * before the guest sees completion. Outcomes are asserted, times only loosely.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Bar2, EngineError, EngineStatus, PAGE_SIZE, xyColorBlt, xySrcCopyBlt } from "../../src/abi/index.js";
import { GuestDriver } from "../../src/guest/index.js";
import { ClientBus } from "../../src/vmm/client-bus.js";
import { Client, DMA_FLAG_READ, DMA_FLAG_WRITE, Errno, VfioUserError } from "../../src/vfio-user/index.js";
import { ServeProcess } from "../support/serve-process.js";

const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };
const MiB = 1 << 20;
const A = "aaaaaaaa-0000-4000-8000-00000000000a";
const B = "bbbbbbbb-0000-4000-8000-00000000000b";
const C = "cccccccc-0000-4000-8000-00000000000c";
/** Long enough for the "sits, then answers" case; the "never answers" case waits it out. */
const WATCHDOG_MS = 3000;
const MMIO = 2;

let dir: string;
let serve: ServeProcess;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "mgpu-guest-dma-"));
  serve = await ServeProcess.start([`mgpu-2q:${A}`, `mgpu-2q:${B}`, `mgpu-1q:${C}`], dir, [
    "--watchdog-ms",
    String(WATCHDOG_MS),
  ]);
});
after(async () => {
  await serve.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** How the VMM serves the device's DMA requests: each call is one message. */
interface MemoryLog {
  reads: { address: bigint; length: number }[];
  writes: { address: bigint; length: number }[];
}

interface XenTenant {
  client: Client;
  bus: ClientBus;
  driver: GuestDriver;
  ram: Uint8Array;
  log: MemoryLog;
  /** Runs before a DMA_READ is answered (may throw to refuse it). */
  onRead: ((address: bigint, length: number) => void) | undefined;
  /** Maps `pages` guest pages at `gpa` at the top of the partition; returns their GMA. */
  mapSystem(gpa: number, pages: number): number;
  close(): void;
}

const RAM = 24 * MiB;
const BATCH_GPA = 16 * MiB;

/** A guest whose RAM the device reaches only by DMA_READ/DMA_WRITE (DMA_MAP without an fd). */
function xenTenant(uuid: string): XenTenant {
  const socket = serve.vgpus.find((v) => v.uuid === uuid)!.socket;
  const ram = new Uint8Array(RAM);
  const log: MemoryLog = { reads: [], writes: [] };
  const tenant: XenTenant = {
    ram,
    log,
    onRead: undefined,
    client: undefined as unknown as Client,
    bus: undefined as unknown as ClientBus,
    driver: undefined as unknown as GuestDriver,
    mapSystem(gpa, pages) {
      const p = this.driver.partition;
      const first = p.gmSize / PAGE_SIZE - pages;
      for (let i = 0; i < pages; i++) this.driver.writeGtt(first + i, gpa + i * PAGE_SIZE, true);
      return p.gmBase + first * PAGE_SIZE;
    },
    close() {
      bus.close();
      this.client.close();
    },
  };
  tenant.client = Client.connect(socket, {
    ...quiet,
    memory: {
      read(address, out) {
        tenant.onRead?.(address, out.length);
        log.reads.push({ address, length: out.length });
        out.set(ram.subarray(Number(address), Number(address) + out.length));
      },
      write(address, data) {
        log.writes.push({ address, length: data.length });
        ram.set(data, Number(address));
      },
    },
  });
  tenant.client.dmaMap({
    flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
    offset: 0n,
    address: 0n,
    size: BigInt(RAM),
  });
  const bus = new ClientBus(tenant.client);
  tenant.bus = bus;
  tenant.driver = new GuestDriver(bus);
  tenant.driver.init(0xe0000000, {
    systemBatch: { gpa: BATCH_GPA, bytes: ram.subarray(BATCH_GPA, BATCH_GPA + 4 * MiB) },
  });
  return tenant;
}

/** A guest with nothing in guest RAM (its work is in local memory): the bystander. */
function localTenant(uuid: string): { client: Client; bus: ClientBus; driver: GuestDriver; close(): void } {
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

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** Reads registers and renders small fills for `ms`; returns the worst register read (ms). */
function bystanderWorks(t: ReturnType<typeof localTenant>, ms: number): number {
  let worst = 0;
  const fb = t.driver.alloc(4 * PAGE_SIZE);
  for (let i = 0, end = performance.now() + ms; performance.now() < end; i++) {
    const t0 = performance.now();
    t.bus.mmioRead(MMIO, Bar2.ENGINE_STATUS, 4);
    worst = Math.max(worst, performance.now() - t0);
    t.driver.execute(xyColorBlt(fb, 4096, { x: 0, y: 0, width: 64, height: 4 }, 0xff000000 | i));
    sleep(2);
  }
  return worst;
}

function engineError(t: { bus: ClientBus }): number {
  return t.bus.mmioRead(MMIO, Bar2.ENGINE_ERROR, 4);
}

/** BAR0 bytes of a local GMA the driver allocated. */
function local(t: XenTenant, gma: number, length: number): Uint8Array {
  const at = gma - t.driver.partition.gmBase;
  return t.bus.barMemory(0)!.subarray(at, at + length);
}

test("a copy from guest pages served by messages is staged in one batch and matches a reference", () => {
  const x = xenTenant(A);
  try {
    // 16 contiguous source pages (one row each), filled with a pattern by the guest's CPU.
    const SRC = 1 * MiB;
    for (let i = 0; i < 16 * PAGE_SIZE; i++) x.ram[SRC + i] = (i * 7 + 3) & 0xff;
    const src = x.mapSystem(SRC, 16);
    const dst = x.driver.alloc(16 * PAGE_SIZE); // local memory
    x.log.reads.length = 0;
    x.driver.execute(xySrcCopyBlt(dst, 4096, { x: 0, y: 0, width: 1024, height: 16 }, src, 4096, 0, 0));
    assert.deepEqual(local(x, dst, 16 * PAGE_SIZE), x.ram.subarray(SRC, SRC + 16 * PAGE_SIZE));
    const srcReads = x.log.reads.filter((r) => r.address >= SRC && r.address < SRC + 16 * PAGE_SIZE);
    const bytes = srcReads.reduce((n, r) => n + r.length, 0);
    assert.equal(bytes, 16 * PAGE_SIZE, "every source page fetched once");
    // One piece for 64 KiB of contiguous pages (the transfer size allows it), not one per page.
    assert.ok(srcReads.length <= 2, `${srcReads.length} DMA_READs for 16 contiguous pages`);
  } finally {
    x.close();
  }
});

test("what the engine writes goes back byte-exact before completion; bytes it did not write are never sent", () => {
  const x = xenTenant(A);
  try {
    const DST = 2 * MiB;
    x.ram.fill(0x11, DST, DST + 4 * PAGE_SIZE);
    const dst = x.mapSystem(DST, 4);
    // A 32-pixel-wide rect in four one-page rows: bytes 64..192 of each page.
    const blit = xyColorBlt(dst, 4096, { x: 16, y: 0, width: 32, height: 4 }, 0xcafe0001);
    // The guest's CPU keeps writing the rest of those pages while the blit is in flight.
    x.onRead = () => {
      for (let p = 0; p < 4; p++) {
        x.ram.fill(0x22, DST + p * PAGE_SIZE, DST + p * PAGE_SIZE + 64);
        x.ram.fill(0x33, DST + p * PAGE_SIZE + 192, DST + (p + 1) * PAGE_SIZE);
      }
    };
    x.log.reads.length = 0;
    x.log.writes.length = 0;
    x.driver.execute(blit);
    x.onRead = undefined;
    for (let p = 0; p < 4; p++) {
      const page = new DataView(x.ram.buffer, DST + p * PAGE_SIZE, PAGE_SIZE);
      for (let o = 64; o < 192; o += 4) assert.equal(page.getUint32(o, true), 0xcafe0001, `page ${p} +${o}`);
      const base = DST + p * PAGE_SIZE;
      // Whatever the CPU wrote around the rect (after or before the batch) is intact.
      for (const o of [0, 63, 192, 4095])
        assert.notEqual(x.ram[base + o], 0xcafe0001 & 0xff, `page ${p} +${o}`);
    }
    // Only the rect's bytes went back, and a destination the engine only writes is never read.
    const written = x.log.writes.filter((w) => w.address >= DST && w.address < DST + 4 * PAGE_SIZE);
    assert.equal(
      written.reduce((n, w) => n + w.length, 0),
      4 * 128,
    );
    assert.equal(x.log.reads.filter((r) => r.address >= DST && r.address < DST + 4 * PAGE_SIZE).length, 0);
  } finally {
    x.close();
  }
});

test("a VMM that sits on its DMA_READs parks only its vGPU: a bystander is served, and the work completes once answered", (t) => {
  const x = xenTenant(A);
  const victim = localTenant(C);
  try {
    const SRC = 3 * MiB;
    for (let i = 0; i < 64 * PAGE_SIZE; i++) x.ram[SRC + i] = (i * 13) & 0xff;
    const src = x.mapSystem(SRC, 64);
    const dst = x.driver.alloc(64 * PAGE_SIZE);
    // Submit, then don't look at the socket: the device's DMA_READs wait unanswered.
    x.driver.enqueue(xySrcCopyBlt(dst, 4096, { x: 0, y: 0, width: 1024, height: 64 }, src, 4096, 0, 0));
    x.log.reads.length = 0;
    const worst = bystanderWorks(victim, 1500);
    t.diagnostic(`bystander's worst register read: ${worst.toFixed(2)} ms`);
    assert.ok(worst < 1000, `bystander's worst register read ${worst.toFixed(1)} ms`);
    assert.equal(x.log.reads.length, 0, "its VMM answered nothing meanwhile");
    // Its vGPU is still waiting, not failed (this read answers the requests queued for the VMM).
    assert.equal(engineError(x), EngineError.NONE);
    // Answering now (the driver's wait serves the requests) lets it complete.
    x.driver.drain(10_000);
    assert.deepEqual(local(x, dst, 64 * PAGE_SIZE), x.ram.subarray(SRC, SRC + 64 * PAGE_SIZE));
  } finally {
    x.close();
    victim.close();
  }
});

test("a reply that never comes stops that vGPU alone (a hang: the wait counts against its watchdog)", async (t) => {
  const x = xenTenant(B);
  const victim = localTenant(C);
  try {
    const SRC = 4 * MiB;
    const src = x.mapSystem(SRC, 8);
    x.driver.enqueue(
      xySrcCopyBlt(
        x.driver.alloc(8 * PAGE_SIZE),
        4096,
        { x: 0, y: 0, width: 1024, height: 8 },
        src,
        4096,
        0,
        0,
      ),
    );
    x.log.reads.length = 0;
    const worst = bystanderWorks(victim, WATCHDOG_MS + 1000);
    t.diagnostic(`bystander's worst register read: ${worst.toFixed(2)} ms`);
    assert.ok(worst < 1000, `bystander's worst register read ${worst.toFixed(1)} ms`);
    assert.equal(x.log.reads.length, 0, "its VMM answered nothing meanwhile");
    // Refuse everything from here on: the answers would come too late anyway.
    x.onRead = () => {
      throw new VfioUserError(Errno.EFAULT, "too late");
    };
    const status = x.bus.mmioRead(MMIO, Bar2.ENGINE_STATUS, 4);
    assert.ok(status & EngineStatus.ERROR, `status 0x${status.toString(16)}`);
    assert.equal(engineError(x), EngineError.HANG);
    const stats = (await serve.request({ cmd: "stats" })).vgpus as {
      uuid: string;
      stats: { hangs: number };
    }[];
    assert.equal(stats.find((v) => v.uuid === B)!.stats.hangs, 1);
    assert.match(serve.stderr, /guest memory did not arrive within the watchdog/);
    // It recovers with an engine reset, and works again once its VMM answers.
    x.onRead = undefined;
    x.driver.recover();
    x.driver.execute(xyColorBlt(x.driver.alloc(PAGE_SIZE), 4096, { x: 0, y: 0, width: 8, height: 1 }, 7));
  } finally {
    x.close();
    victim.close();
  }
});

test("a VMM that refuses a DMA_READ gets its vGPU DMA_ERROR; the others carry on", async () => {
  const x = xenTenant(B);
  const victim = localTenant(C);
  try {
    const SRC = 5 * MiB;
    const src = x.mapSystem(SRC, 4);
    x.onRead = (address) => {
      if (address >= SRC && address < SRC + 4 * PAGE_SIZE) throw new VfioUserError(Errno.EFAULT, "not yours");
    };
    assert.throws(
      () =>
        x.driver.execute(
          xySrcCopyBlt(
            x.driver.alloc(4 * PAGE_SIZE),
            4096,
            { x: 0, y: 0, width: 1024, height: 4 },
            src,
            4096,
            0,
            0,
          ),
        ),
      /engine error 0x300/,
    );
    assert.equal(engineError(x), EngineError.DMA_ERROR);
    bystanderWorks(victim, 200);
    const stats = (await serve.request({ cmd: "stats" })).vgpus as {
      uuid: string;
      stats: { dmaErrors: number };
    }[];
    assert.equal(stats.find((v) => v.uuid === B)!.stats.dmaErrors, 1);
    x.onRead = undefined;
    x.driver.recover();
  } finally {
    x.close();
    victim.close();
  }
});
