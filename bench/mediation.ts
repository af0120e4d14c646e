/**
 * Mediation benchmark: the workload suite run natively (the native driver on a
 * parent GPU in this process) and through a vGPU (the guest driver over the
 * vfio-user client against `mgpu serve` in another process), in one run, as a
 * ratio. Each submission repeats a workload until it is about one 60 Hz frame
 * of GPU work natively, the same count both ways. Also: the trap round trip of
 * a BAR2 register read, the GTT update rate and the command-scan rate.
 */
import { encodeOps, gttEntry } from "../src/abi/index.js";
import {
  GraphicsMemory,
  Gtt,
  LocalMemory,
  NativeDriver,
  SoftwareGpu,
  desktopFrame,
  workloadSuite,
} from "../src/gpu/index.js";
import { GuestDriver } from "../src/guest/index.js";
import { ClientBus } from "../src/vmm/client-bus.js";
import { Scanner } from "../src/mediator/scanner.js";
import { Client } from "../src/vfio-user/index.js";
import { DaemonProcess } from "../src/manager/process.js";
import { type BenchFigure, type BenchReport, percentile } from "./report.js";
import { quietLogger } from "../src/base/index.js";

const ROUNDS = 5;
const FRAME_MS = 16;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

export async function run(): Promise<BenchReport> {
  const uuid = "be0c0000-0000-4000-8000-000000000001";
  const daemon = await DaemonProcess.start({ vgpus: [`mgpu-4q:${uuid}`], args: ["--watchdog-ms", "5000"] });
  const ready = { vgpus: daemon.vgpus };
  const quiet = quietLogger;
  const client = Client.connect(ready.vgpus[0]!.socket, { logger: quiet });
  const bus = new ClientBus(client);
  const guest = new GuestDriver(bus);
  guest.init();

  const gpu = new SoftwareGpu();
  const native = new NativeDriver(gpu, { size: 256 << 20 });
  const figures: BenchFigure[] = [];
  const details: Record<string, unknown> = {};
  const suite = workloadSuite();
  for (const w of suite) {
    const ns = native.prepare(w);
    const gs = guest.prepare(w);
    // Calibrate (warm): repeat until one submission is about a frame of native GPU work.
    for (let i = 0; i < 3; i++) native.run(w, ns);
    const once = median([0, 1, 2, 3, 4].map(() => time(() => native.run(w, ns))));
    const maxRepeat = Math.floor((4 << 20) / 4 / encodeOps(w.ops, ns).length) - 2;
    const repeat = Math.max(1, Math.min(maxRepeat, Math.round(FRAME_MS / Math.max(once, 0.001))));
    // Both sides submit a stream built beforehand: what is timed is submission and execution.
    const nativeOps: number[] = [];
    for (let i = 0; i < repeat; i++) nativeOps.push(...encodeOps(w.ops, ns));
    const guestOps: number[] = [];
    for (let i = 0; i < repeat; i++) guestOps.push(...encodeOps(w.ops, gs));
    native.submitBatchLarge(nativeOps);
    guest.execute(guestOps);
    const n: number[] = [];
    const m: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      n.push(time(() => native.submitBatchLarge(nativeOps)));
      m.push(time(() => guest.execute(guestOps)));
    }
    const ratio = median(n) / median(m);
    figures.push({
      metric: `${w.name} ×${repeat}: mediated / native`,
      value: ratio,
      unit: "×",
      note: `native ${median(n).toFixed(2)} ms, mediated ${median(m).toFixed(2)} ms`,
    });
    details[w.name] = { repeat, nativeMs: n, mediatedMs: m };
  }

  // Trap round trip: a BAR2 register read through the whole path.
  const rtt = new Float64Array(5000);
  for (let i = 0; i < 500; i++) bus.mmioRead(2, 0x2010, 4);
  for (let i = 0; i < rtt.length; i++) {
    const t0 = performance.now();
    bus.mmioRead(2, 0x2010, 4);
    rtt[i] = (performance.now() - t0) * 1000;
  }
  rtt.sort();
  figures.push({ metric: "BAR2 register read trap round trip p50", value: percentile(rtt, 50), unit: "µs" });
  figures.push({ metric: "BAR2 register read trap round trip p99", value: percentile(rtt, 99), unit: "µs" });

  // GTT updates: validated and shadowed entries per second (each entry is two trapped dword writes).
  const entries = 4096;
  const gttMs = time(() => {
    for (let i = 0; i < entries; i++) guest.writeGtt(i, guest.partition.lmBase + i * 4096, false);
  });
  figures.push({
    metric: "GTT updates (through vfio-user)",
    value: entries / (gttMs / 1000),
    unit: "entries/s",
  });

  // Command scanning, in process: a large desktop-frame stream from a ring of batches.
  const local = new LocalMemory(64 << 20);
  const gtt = new Gtt(16 << 10);
  for (let i = 0; i < gtt.entries; i++) gtt.write(i, gttEntry("local", (i * 4096) % (64 << 20)));
  const mem = new GraphicsMemory(local, gtt);
  const frame = desktopFrame();
  const cmds: number[] = [];
  const surfaces = {
    screen: { gma: 8 << 20, width: 1280, height: 800, pitch: 5120 },
    windows: { gma: 16 << 20, width: 1280, height: 800, pitch: 5120 },
  };
  while (cmds.length < (1 << 20) / 4) cmds.push(...encodeOps(frame.ops, surfaces));
  const ringAt = 32 << 20;
  const ringBytes = 2 << 20;
  local.words.set(cmds, ringAt / 4);
  const scanner = new Scanner(mem, { base: 0, size: 64 << 20 }, { maxCommands: 1 << 22, maxBatchJumps: 256 });
  const scans: number[] = [];
  for (let r = 0; r < ROUNDS; r++)
    scans.push(time(() => scanner.scanRing(ringAt, ringBytes, 0, cmds.length * 4)));
  figures.push({
    metric: "command scan rate",
    value: (cmds.length * 4) / (median(scans) / 1000) / 1e6,
    unit: "MB/s",
  });
  local.close();

  bus.close();
  client.close();
  await daemon.stop();
  gpu.close();
  return { name: "mediation", figures, details };
}
