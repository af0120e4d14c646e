/**
 * Scale benchmark: 1, 2, 4, 8 and 16 simulated VMs at once on one parent GPU
 * (alternating mgpu-1q and mgpu-2q, so weights 1 and 2), each rendering
 * GPU-heavy desktop frames through its vGPU. Aggregate throughput is compared
 * with a native single client measured in the same run (the native driver,
 * same frames, same work per submission); each vGPU's share of engine time is
 * compared with its weight's share.
 */
import { encodeOps } from "../src/abi/index.js";
import { NativeDriver, SoftwareGpu, desktopFrame } from "../src/gpu/index.js";
import { runVms } from "../src/vmm/sim/run.js";
import { DaemonProcess } from "../src/manager/process.js";
import type { BenchFigure, BenchReport } from "./report.js";

const SECONDS = 3;
const WORK = 8;
const COUNTS = [1, 2, 4, 8, 16];

/** Native single client: frames per second of the same submissions. */
function nativeFramesPerSecond(): number {
  const gpu = new SoftwareGpu();
  const drv = new NativeDriver(gpu, { size: 64 << 20 });
  const s = drv.prepare(desktopFrame(1));
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  let frames = 0;
  const ops = encodeOps(desktopFrame(2).ops, s);
  const stream = Array.from({ length: WORK }, () => ops).flat();
  while (performance.now() < end) {
    drv.submitBatch(stream);
    frames++;
  }
  gpu.close();
  return frames / ((performance.now() - t0) / 1000);
}

async function scalePoint(
  count: number,
): Promise<{ fps: number; shares: { type: string; share: number; weightShare: number }[] }> {
  const types = Array.from({ length: count }, (_, i) => (i % 2 ? "mgpu-2q" : "mgpu-1q"));
  const daemon = await DaemonProcess.start({ vgpus: types });
  try {
    const ready = { vgpus: daemon.vgpus };
    type Stat = { uuid: string; type: string; stats: { busyMs: number } };
    const stats = async () => (await daemon.request({ cmd: "stats" })).vgpus as Stat[];
    // Shares count only the contended run: busy time from the moment all VMs start.
    let atStart: Promise<Stat[]> | undefined;
    let atEnd: Promise<Stat[]> | undefined;
    const results = await runVms(
      ready.vgpus.map((v, i) => ({ name: `vm${i}`, socket: v.socket, memoryModel: "kvm" as const })),
      {
        seconds: SECONDS,
        work: WORK,
        animate: false,
        onStart: () => {
          atStart = stats();
          // The window ends when the VMs stop submitting, before they drain.
          atEnd = new Promise((r) => setTimeout(() => r(stats()), SECONDS * 1000));
        },
      },
    );
    const before = await atStart!;
    const after = await atEnd!;
    const busy = after.map((s) => s.stats.busyMs - before.find((b) => b.uuid === s.uuid)!.stats.busyMs);
    const totalBusy = busy.reduce((a, b) => a + b, 0);
    const weight = (t: string) => (t === "mgpu-2q" ? 2 : 1);
    const total = types.reduce((n, t) => n + weight(t), 0);
    return {
      fps: results.reduce((n, r) => n + r.completedInTime, 0) / SECONDS,
      shares: after.map((s, i) => ({
        type: s.type,
        share: busy[i]! / totalBusy,
        weightShare: weight(s.type) / total,
      })),
    };
  } finally {
    await daemon.stop();
  }
}

export async function run(): Promise<BenchReport> {
  const native = nativeFramesPerSecond();
  const figures: BenchFigure[] = [
    {
      metric: `native single client (×${WORK} desktop frames per submission)`,
      value: native,
      unit: "submissions/s",
    },
  ];
  const details: Record<string, unknown> = { native };
  for (const count of COUNTS) {
    const p = await scalePoint(count);
    const worst = Math.max(...p.shares.map((s) => Math.abs(s.share - s.weightShare) / s.weightShare));
    figures.push({
      metric: `${count} VM${count > 1 ? "s" : ""}: aggregate / native`,
      value: p.fps / native,
      unit: "×",
      note: count === 16 ? "target ≥ 0.9" : `${p.fps.toFixed(1)} submissions/s`,
    });
    figures.push({
      metric: `${count} VM${count > 1 ? "s" : ""}: worst share error vs weight`,
      value: 100 * worst,
      unit: "%",
      note: count === 16 ? "target ≤ 5" : "",
    });
    details[`vms${count}`] = p;
  }
  return { name: "scale", figures, details };
}
