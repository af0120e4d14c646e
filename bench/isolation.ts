/**
 * Isolation benchmark (issue 11): what a hostile tenant costs a victim on the
 * same parent GPU. For each hostile stream — the worst its type allows — a
 * fresh daemon serves a victim vGPU and a hostile one; the victim's trapped
 * register reads are timed idle, then while the hostile keeps its queue full
 * of that stream. Reported per stream: the victim's p99 against its idle p99,
 * the longest engine run between two looks at the clock (a bound on the
 * longest step), the longest scheduler tick and the daemon's RSS growth.
 * Then the desktop-frame mediated/native ratio with banding on.
 *
 * To add a row, add a `HostileStream` to `streams` (or a figure to `extras`).
 */
import { readFileSync } from "node:fs";
import {
  Bar2,
  EngineStatus,
  MI_BATCH_BUFFER_END,
  PAGE_SIZE,
  RingCtl,
  encodeOps,
  miBatchBufferStart,
  miLoadRegisterImm,
  xySrcCopyBlt,
} from "../src/abi/index.js";
import { NativeDriver, SoftwareGpu, desktopFrame } from "../src/gpu/index.js";
import { GuestDriver } from "../src/guest/index.js";
import { ClientBus } from "../src/vmm/client-bus.js";
import { Client } from "../src/vfio-user/index.js";
import { DaemonProcess } from "../src/manager/process.js";
import { closeFd, createMemfd } from "../src/sys/index.js";
import { type BenchFigure, type BenchReport, percentile } from "./report.js";

const VICTIM = "a1c7a1c7-0000-4000-8000-000000000001";
const HOSTILE = "0bad0bad-0000-4000-8000-000000000002";
const READS = 3000;
const quiet = { error() {}, warn() {}, info() {}, debug() {} };

interface Tenant {
  readonly client: Client;
  readonly bus: ClientBus;
  readonly driver: GuestDriver;
}

function attach(daemon: DaemonProcess, uuid: string): Tenant {
  const client = Client.connect(daemon.vgpus.find((v) => v.uuid === uuid)!.socket, { logger: quiet });
  const bus = new ClientBus(client);
  const driver = new GuestDriver(bus);
  driver.init();
  return { client, bus, driver };
}

function detach(t: Tenant): void {
  t.bus.close();
  t.client.close();
}

function words(t: Tenant, gma: number, count: number): Uint32Array {
  const fb = t.bus.barMemory(0)!;
  return new Uint32Array(fb.buffer, fb.byteOffset + (gma - t.driver.partition.gmBase), count);
}

/** A hostile tenant's stream: `prepare` builds it once, `submit` queues as much of it as the vGPU takes. */
interface HostileStream {
  readonly name: string;
  prepare(h: Tenant): { submit(): void; release?(): void };
}

/**
 * Points the hostile's ring at a ring of its own full of starts of `batch`,
 * and returns a submitter: `n` posted tail writes, one batch start each.
 */
function ringOfBatchStarts(h: Tenant, batch: number, n: number): () => void {
  const ringBytes = 16 * PAGE_SIZE;
  const ring = h.driver.alloc(ringBytes);
  const start = miBatchBufferStart(batch);
  const rw = words(h, ring, ringBytes / 4);
  for (let i = 0; i + 3 <= rw.length; i += 3) rw.set(start, i);
  const slots = Math.floor(ringBytes / 12);
  let tail = 0;
  const value = new Uint8Array(4);
  const program = () => {
    h.bus.mmioWrite(2, Bar2.RING_CTL, 4, 0);
    h.bus.mmioWrite(2, Bar2.RING_START, 4, ring);
    h.bus.mmioWrite(2, Bar2.RING_CTL, 4, RingCtl.encode(ringBytes / PAGE_SIZE));
    tail = 0;
  };
  program();
  return () => {
    // After an error (a refused merged submission, say) reset and start the ring over.
    if (h.bus.mmioRead(2, Bar2.ENGINE_STATUS, 4) & EngineStatus.ERROR) {
      h.bus.mmioWrite(2, Bar2.ENGINE_RESET, 4, 1);
      program();
    }
    for (let i = 0; i < n; i++) {
      tail = (tail + 1) % slots;
      new DataView(value.buffer).setUint32(0, tail * 12, true);
      h.client.regionWrite(2, Bar2.RING_TAIL, value, { posted: true });
    }
  };
}

function batchOf(h: Tenant, cmds: readonly number[]): number {
  const batch = h.driver.alloc((cmds.length + 1) * 4);
  const w = words(h, batch, cmds.length + 1);
  w.set(cmds);
  w[cmds.length] = MI_BATCH_BUFFER_END;
  return batch;
}

const streams: HostileStream[] = [
  {
    name: "16383x200 copies (40 per submission)",
    prepare(h) {
      const src = h.driver.allocSurface(16383, 200);
      const dst = h.driver.allocSurface(16383, 200);
      const rect = { x: 0, y: 0, width: 16383, height: 200 };
      const copy = xySrcCopyBlt(dst.gma, dst.pitch, rect, src.gma, src.pitch, 0, 0);
      const batch = batchOf(h, Array.from({ length: 40 }, () => copy).flat());
      return { submit: ringOfBatchStarts(h, batch, 12) };
    },
  },
  {
    name: "64 copies over guest pages per submission",
    prepare(h) {
      const ramSize = 4 << 20;
      const ram = createMemfd("hostile-ram", ramSize);
      h.client.dmaMap({ flags: 3, offset: 0n, address: 1n << 32n, size: BigInt(ramSize) }, ram);
      const p = h.driver.partition;
      const first = p.lmSize / PAGE_SIZE;
      for (let i = 0; i < ramSize / PAGE_SIZE; i++)
        h.driver.writeGtt(first + i, 2 ** 32 + i * PAGE_SIZE, true);
      const gma = p.gmBase + p.lmSize;
      const pitch = 16383 * 4;
      const rows = Math.floor(ramSize / 2 / pitch);
      const rect = { x: 0, y: 0, width: 16383, height: rows };
      const copy = xySrcCopyBlt(gma + rows * pitch, pitch, rect, gma, pitch, 0, 0);
      const batch = batchOf(h, Array.from({ length: 64 }, () => copy).flat());
      return { submit: ringOfBatchStarts(h, batch, 12), release: () => closeFd(ram) };
    },
  },
  {
    name: "tail flood: 100 posted writes of 4 MiB submissions",
    prepare(h) {
      // The longest command (a 63-dword register load), 4 MiB of it: the most a submission may flatten to.
      const pairs = Array.from({ length: 31 }, (_, i) => [Bar2.GPR0 + (i % 16) * 4, i] as [number, number]);
      const lri = miLoadRegisterImm(pairs);
      const count = Math.floor(((4 << 20) - 4) / (lri.length * 4));
      const batch = batchOf(h, Array.from({ length: count }, () => lri).flat());
      return { submit: ringOfBatchStarts(h, batch, 100) };
    },
  },
];

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? NaN) / 1024;
}

/** Times `n` trapped register reads of the victim (µs, sorted); `between` runs every 50 reads. */
function victimReads(v: Tenant, n: number, between?: () => void): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    if (between && i % 50 === 0) between();
    const t0 = performance.now();
    v.bus.mmioRead(2, Bar2.ENGINE_STATUS, 4);
    out[i] = (performance.now() - t0) * 1000;
  }
  return out.sort();
}

interface DaemonFigures {
  scheduler: { longestRunMs: number; longestTickMs: number; preemptions: number };
  engine: { longestStepBytes: number };
  bandBytes: number;
}

async function measureStream(
  stream: HostileStream,
  figures: BenchFigure[],
  details: Record<string, unknown>,
) {
  const daemon = await DaemonProcess.start({
    vgpus: [`mgpu-1q:${VICTIM}`, `mgpu-2q:${HOSTILE}`],
    args: ["--watchdog-ms", "60000"],
  });
  const pid = daemon.child.pid!;
  const v = attach(daemon, VICTIM);
  const h = attach(daemon, HOSTILE);
  victimReads(v, 500); // warm
  const idle = victimReads(v, READS);
  const idleP99 = percentile(idle, 99);
  const hostile = stream.prepare(h);
  const rssBefore = rssMiB(pid);
  let rssPeak = rssBefore;
  let busyLooks = 0;
  let looks = 0;
  hostile.submit();
  const loaded = victimReads(v, READS, () => {
    rssPeak = Math.max(rssPeak, rssMiB(pid));
    looks++;
    // Keep the hostile's queue full: whenever it went idle (done, or refused), submit again.
    if (h.bus.mmioRead(2, Bar2.ENGINE_STATUS, 4) & EngineStatus.IDLE) hostile.submit();
    else busyLooks++;
  });
  rssPeak = Math.max(rssPeak, rssMiB(pid));
  const stats = (await daemon.request({ cmd: "stats" })) as unknown as DaemonFigures;
  const p99 = percentile(loaded, 99);
  const s = stream.name;
  figures.push(
    {
      metric: `victim read p99 vs ${s}`,
      value: p99,
      unit: "µs",
      note: `idle p99 ${idleP99.toFixed(0)} µs: ${(p99 / idleP99).toFixed(2)}× (target ≤ 2×)`,
    },
    {
      metric: `longest engine run vs ${s}`,
      value: stats.scheduler.longestRunMs,
      unit: "ms",
      note: `between clock looks, ≥ longest step (target ≤ 2 ms); longest step ${stats.engine.longestStepBytes} B`,
    },
    {
      metric: `longest scheduler tick vs ${s}`,
      value: stats.scheduler.longestTickMs,
      unit: "ms",
      note: `scan + slice; ${stats.scheduler.preemptions} preemptions`,
    },
    {
      metric: `daemon RSS growth vs ${s}`,
      value: rssPeak - rssBefore,
      unit: "MiB",
      note: `from ${rssBefore.toFixed(0)} MiB (flood target ≤ 64 MiB); hostile busy at ${busyLooks}/${looks} looks`,
    },
  );
  details[s] = {
    victimIdle: { p50: percentile(idle, 50), p99: idleP99 },
    victimLoaded: { p50: percentile(loaded, 50), p99, max: loaded[loaded.length - 1] },
    scheduler: stats.scheduler,
    rss: { before: rssBefore, peak: rssPeak },
    hostileBusyLooks: busyLooks,
    looks,
  };
  detach(v);
  detach(h);
  hostile.release?.();
  await daemon.stop();
}

/** The desktop frame through a vGPU (bands on) against the native driver, as `bench mediation` does. */
async function desktopRatio(figures: BenchFigure[], details: Record<string, unknown>) {
  const daemon = await DaemonProcess.start({ vgpus: [`mgpu-4q:${VICTIM}`], args: ["--watchdog-ms", "5000"] });
  const guest = attach(daemon, VICTIM);
  const gpu = new SoftwareGpu();
  const native = new NativeDriver(gpu, { size: 256 << 20 });
  const w = desktopFrame();
  const ns = native.prepare(w);
  const gs = guest.driver.prepare(w);
  const time = (fn: () => void) => {
    const t0 = performance.now();
    fn();
    return performance.now() - t0;
  };
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (let i = 0; i < 3; i++) native.run(w, ns);
  const once = median([0, 1, 2, 3, 4].map(() => time(() => native.run(w, ns))));
  const repeat = Math.max(1, Math.round(16 / Math.max(once, 0.001)));
  const nativeOps = Array.from({ length: repeat }, () => encodeOps(w.ops, ns)).flat();
  const guestOps = Array.from({ length: repeat }, () => encodeOps(w.ops, gs)).flat();
  native.submitBatchLarge(nativeOps);
  guest.driver.execute(guestOps);
  const n: number[] = [];
  const m: number[] = [];
  for (let r = 0; r < 7; r++) {
    n.push(time(() => native.submitBatchLarge(nativeOps)));
    m.push(time(() => guest.driver.execute(guestOps)));
  }
  figures.push({
    metric: `desktop-frame ×${repeat}: mediated / native (banded)`,
    value: median(n) / median(m),
    unit: "×",
    note: `native ${median(n).toFixed(2)} ms, mediated ${median(m).toFixed(2)} ms (target ≥ 0.95)`,
  });
  details["desktop-frame"] = { repeat, nativeMs: n, mediatedMs: m };
  detach(guest);
  gpu.close();
  await daemon.stop();
}

/** Figures that are not one hostile stream each. */
const extras: ((figures: BenchFigure[], details: Record<string, unknown>) => Promise<void>)[] = [
  desktopRatio,
];

export async function run(): Promise<BenchReport> {
  const figures: BenchFigure[] = [];
  const details: Record<string, unknown> = {};
  for (const s of streams) await measureStream(s, figures, details);
  for (const e of extras) await e(figures, details);
  return { name: "isolation", figures, details };
}
