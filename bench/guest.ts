/**
 * `npm run bench -- guest`: the workload suite natively on the host (the
 * NativeDriver on the parent GPU, in this process) against the same streams
 * from a real Linux guest under QEMU (TCG) driving a vGPU of `mgpu serve`
 * through the C guest driver, in one run: each workload natively right before
 * the guest runs it (the guest waits, idle), and natively again at the end to
 * show the machine's drift. Ratio per workload, and where the
 * gap goes: the guest's trapped accesses per iteration times their measured
 * latency (the trap path), the rest being the VMM and the mediator (MSI
 * delivery, scanning, scheduling).
 *
 * Needs what the end-to-end tests need: root, the provisioned guest tree
 * (MGPU_GUEST_TREE, or scripts/provision-guest.sh is asked) and a static C
 * toolchain.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { type Workload, encodeOps } from "../src/abi/index.js";
import { NativeDriver, SoftwareGpu, workloadSuite } from "../src/gpu/index.js";
import { DaemonProcess } from "../src/manager/process.js";
import { bootGuest, guestTree } from "../test/e2e/guest.js";
import { buildGuestDriver, vgpuGuest, workloadKey } from "../test/e2e/guest-driver.js";
import { hostLine, onHostWait } from "../test/e2e/host-line.js";
import type { BenchFigure, BenchReport } from "./report.js";

/** Seconds the guest runs each workload per round (pipelined, up to 32 batches in flight). */
const GUEST_SECONDS = 0.4;
/** Rounds per workload, each native then guest; figures are medians of the rounds. */
const ROUNDS = 5;
const NATIVE_MS = 400;

/** Iterations per second of a workload on the native driver (prepared first, not timed). */
function nativeRate(gpu: SoftwareGpu, w: Workload): number {
  const driver = new NativeDriver(gpu, { size: 64 << 20 });
  const surfaces = driver.prepare(w);
  // Encoded once, as the guest does: each iteration is the batch copy, the tail write and the engine.
  const stream = encodeOps(w.ops, surfaces);
  driver.submitBatch(stream);
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < NATIVE_MS || n < 8) {
    driver.submitBatch(stream);
    n++;
  }
  return n / ((performance.now() - t0) / 1000);
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function treeOrProvision(): string {
  const tree = guestTree();
  if (tree) return tree;
  try {
    return execFileSync("bash", ["scripts/provision-guest.sh"], { encoding: "utf8" }).trim();
  } catch (e) {
    throw new Error(`bench guest needs the guest tree (scripts/provision-guest.sh, as root): ${String(e)}`, {
      cause: e,
    });
  }
}

interface GuestRun {
  iters: number;
  perS: number;
  trapsPerIter: number;
  wakeupsPerIter: number;
}

export async function run(): Promise<BenchReport> {
  const tree = treeOrProvision();
  const suite = workloadSuite();
  const build = buildGuestDriver();
  const dir = join(tree, "run", `b${process.pid}`);
  mkdirSync(dir, { recursive: true });
  // Native and guest runs of each workload alternate: the guest waits (idle) while the host measures.
  const gpu = new SoftwareGpu();
  const native = new Map<string, number[]>();
  const line = hostLine(tree, "bench");
  // The daemon's engine time at each stop: what the engine did for the guest between two stops.
  const stops: { label: string; busyMs: number }[] = [];
  const engineBusy = async () =>
    ((await daemon.request({ cmd: "stats" })).vgpus as { stats: { busyMs: number } }[])[0]!.stats.busyMs;
  const atStop = async (label: string) => {
    stops.push({ label, busyMs: await engineBusy() });
    const w = suite.find((x) => `timed-${x.name.toLowerCase()}` === label);
    if (w) native.set(w.name, [...(native.get(w.name) ?? []), nativeRate(gpu, w)]);
    await line.send("go");
  };
  const daemon = await DaemonProcess.start({ vgpus: ["mgpu-2q"], stateDir: dir, socketDir: dir });
  let values: Record<string, string>;
  let output: string;
  let bootMs: number;
  try {
    const r = await bootGuest(
      vgpuGuest({
        tree,
        build,
        socket: daemon.vgpus[0]!.socket,
        line,
        script: `MGPU_HOST_EACH=1 MGPU_ROUNDS=${ROUNDS} MGPU_MIN_SECONDS=${GUEST_SECONDS} mgputool suite $D /workloads.txt /dev/ttyS1`,
        timeoutMs: 300_000,
        onOutput: onHostWait((label) => void atStop(label)),
      }),
    );
    stops.push({ label: "end", busyMs: await engineBusy() });
    if (r.timedOut || r.values.SUITE_FAILURES !== "0")
      throw new Error(
        `the guest suite did not complete:\n${r.output.slice(-3000)}\n${daemon.stderr.slice(-2000)}`,
      );
    values = r.values;
    output = r.output;
    bootMs = r.durationMs;
  } finally {
    line.close();
    await daemon.stop();
    build.remove();
    rmSync(dir, { recursive: true, force: true });
  }
  // Once more natively after the guest, to see the machine's drift.
  for (const w of suite) native.get(w.name)?.push(nativeRate(gpu, w));
  gpu.close();

  // Each round's figures: RUN_<KEY>=round=i iters=... per_s=... traps_per_iter=...
  const guest = new Map<string, GuestRun[]>();
  for (const w of suite) {
    const runs: GuestRun[] = [];
    for (const m of output.matchAll(new RegExp(`^RUN_${workloadKey(w.name)}=(.*)$`, "gm"))) {
      const field = (k: string) => Number(new RegExp(`${k}=([0-9.]+)`).exec(m[1]!)?.[1]);
      runs.push({
        iters: field("iters"),
        perS: field("per_s"),
        trapsPerIter: field("traps_per_iter"),
        wakeupsPerIter: field("wakeups_per_iter"),
      });
    }
    guest.set(w.name, runs);
  }
  const trapUs = Number(values.TRAP_WRITE_US);
  const trapReadUs = Number(values.TRAP_READ_US);
  const figures: BenchFigure[] = [
    { metric: "trapped MMIO read (guest → QEMU → daemon → back)", value: trapReadUs, unit: "µs" },
    { metric: "trapped MMIO write (posted)", value: trapUs, unit: "µs" },
  ];
  const details: Record<string, unknown> = {
    stops,
    guestSeconds: GUEST_SECONDS,
    nativeMs: NATIVE_MS,
    rounds: ROUNDS,
    bootMs,
    loadAverage: loadavg(),
  };
  for (const w of suite) {
    const nativeRuns = native.get(w.name) ?? [];
    const guestRuns = guest.get(w.name) ?? [];
    if (nativeRuns.length < ROUNDS || guestRuns.length !== ROUNDS)
      throw new Error(`${w.name}: ${nativeRuns.length} native and ${guestRuns.length} guest rounds`);
    // Each round pairs a native run with the guest run right after it.
    const ratio = median(guestRuns.map((g, i) => g.perS / nativeRuns[i]!));
    const nativePerS = median(nativeRuns.slice(0, ROUNDS));
    const g = { ...guestRuns[0]!, perS: median(guestRuns.map((x) => x.perS)) };
    const frames = w.name === "desktop-frame";
    const target = frames || w.name.endsWith("-8M") ? "target ≥ 0.9" : undefined;
    const unit = frames ? "frames/s" : "MB/s";
    const scale = (perS: number) => (frames ? perS : (perS * w.bytes) / 1e6);
    figures.push({ metric: `${w.name} native`, value: scale(nativePerS), unit });
    figures.push({ metric: `${w.name} in the guest`, value: scale(g.perS), unit });
    figures.push({
      metric: `${w.name} guest / native`,
      value: ratio,
      unit: "×",
      ...(target ? { note: target } : {}),
    });
    // Where the extra time per iteration goes. The daemon's engine time in each guest round splits it:
    // the engine running slower than natively (sharing the CPU and caches with the VMM), and the
    // engine idle between submissions: the trap path (the guest's trapped tail write, the daemon's
    // handling of it including the scan, which runs on the engine's thread) and MSI delivery.
    const label = `timed-${w.name.toLowerCase()}`;
    const at = stops.flatMap((x, i) => (x.label === label ? [i] : []));
    const engineUs = median(
      guestRuns.map((r, i) => ((stops[at[i]! + 1]!.busyMs - stops[at[i]!]!.busyMs) * 1000) / r.iters),
    );
    const guestUs = 1e6 / g.perS;
    const nativeUs = 1e6 / nativePerS;
    const gapUs = Math.max(0, guestUs - nativeUs);
    const trapPathUs = g.trapsPerIter * trapUs;
    figures.push({
      metric: `${w.name} per iteration: guest, native`,
      value: guestUs,
      unit: "µs",
      note: `native ${nativeUs.toFixed(1)} µs; the daemon's engine ran ${engineUs.toFixed(1)} µs of it`,
    });
    figures.push({
      metric: `${w.name} gap: engine slower in the daemon`,
      value: Math.max(0, Math.min(gapUs, engineUs - nativeUs)),
      unit: "µs",
    });
    figures.push({
      metric: `${w.name} gap: engine idle (trap path, scan, MSI)`,
      value: Math.max(0, guestUs - Math.max(engineUs, nativeUs)),
      unit: "µs",
      note: `of which trapped writes ${trapPathUs.toFixed(1)} µs (${g.trapsPerIter.toFixed(2)} × ${trapUs.toFixed(1)} µs)`,
    });
    details[w.name] = {
      nativePerS: nativeRuns.slice(0, ROUNDS),
      nativePerSAfterGuest: nativeRuns[ROUNDS],
      guest: guestRuns,
      gapUs,
      engineUs,
      trapPathUs,
    };
  }
  return { name: "guest", figures, details };
}
