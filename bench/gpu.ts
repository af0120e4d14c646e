/**
 * Parent-GPU benchmark: the native driver's engine throughput on the workload
 * suite (fills and copies at 4 KiB, 64 KiB and 8 MiB, an overlapping copy, the
 * desktop frame), and in the same run the machine's own memset/memcpy through
 * TypedArray fill/copyWithin on the same local-memory mapping. Rounds alternate
 * engine and baseline; figures are medians.
 */
import { NativeDriver, SoftwareGpu, workloadSuite } from "../src/gpu/index.js";
import type { BenchFigure, BenchReport } from "./report.js";

const ROUNDS = 5;
const ROUND_MS = 200;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Iterations per second of fn over about ROUND_MS. */
function rate(fn: () => void): number {
  fn();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < ROUND_MS) {
    fn();
    n++;
  }
  return n / ((performance.now() - t0) / 1000);
}

export async function run(): Promise<BenchReport> {
  const gpu = new SoftwareGpu();
  const driver = new NativeDriver(gpu, { size: 256 << 20 });
  const suite = workloadSuite();
  const prepared = suite.map((w) => ({ w, surfaces: driver.prepare(w) }));
  // Baseline buffers: 2 × 8 MiB in the same local memory, away from the driver's range.
  const words = gpu.localMemory.words;
  const base = (300 << 20) / 4;
  const baseline = (kind: "memset" | "memcpy", bytes: number) => {
    const n = bytes / 4;
    if (kind === "memset") return () => words.fill(0x5a5a5a5a, base, base + n);
    return () => words.copyWithin(base + (8 << 20) / 4, base, base + n);
  };
  const results = new Map<string, number[]>();
  const push = (k: string, v: number) => results.set(k, [...(results.get(k) ?? []), v]);
  for (let r = 0; r < ROUNDS; r++) {
    for (const { w, surfaces } of prepared) {
      push(w.name, rate(() => driver.run(w, surfaces)) * w.bytes);
      if (w.name.startsWith("fill-") || w.name.startsWith("copy-")) {
        const kind = w.name.startsWith("fill-") ? "memset" : "memcpy";
        push(`${kind}-${w.name.slice(5)}`, rate(baseline(kind, w.bytes)) * w.bytes);
      }
      if (w.name === "desktop-frame")
        push(
          "frames",
          rate(() => driver.run(w, surfaces)),
        );
    }
  }
  gpu.close();
  const gbs = (k: string) => median(results.get(k)!) / 1e9;
  const figures: BenchFigure[] = [];
  for (const size of ["4K", "64K", "8M"]) {
    figures.push({ metric: `engine fill ${size}`, value: gbs(`fill-${size}`), unit: "GB/s" });
    figures.push({ metric: `memset ${size} (TypedArray.fill)`, value: gbs(`memset-${size}`), unit: "GB/s" });
    figures.push({
      metric: `fill ${size} / memset`,
      value: gbs(`fill-${size}`) / gbs(`memset-${size}`),
      unit: "×",
      ...(size === "8M" ? { note: "target ≥ 0.7" } : {}),
    });
  }
  for (const size of ["4K", "64K", "8M"]) {
    figures.push({ metric: `engine copy ${size}`, value: gbs(`copy-${size}`), unit: "GB/s" });
    figures.push({ metric: `memcpy ${size} (copyWithin)`, value: gbs(`memcpy-${size}`), unit: "GB/s" });
    figures.push({
      metric: `copy ${size} / memcpy`,
      value: gbs(`copy-${size}`) / gbs(`memcpy-${size}`),
      unit: "×",
      ...(size === "8M" ? { note: "target ≥ 0.7" } : {}),
    });
  }
  figures.push({ metric: "engine overlapping copy", value: gbs("overlap-copy"), unit: "GB/s" });
  figures.push({
    metric: "desktop frame (1280×800, 251 blits)",
    value: median(results.get("frames")!),
    unit: "frames/s",
  });
  figures.push({ metric: "desktop frame throughput", value: gbs("desktop-frame"), unit: "GB/s" });
  return {
    name: "gpu",
    figures,
    details: { rounds: ROUNDS, roundMs: ROUND_MS, samples: Object.fromEntries(results) },
  };
}
