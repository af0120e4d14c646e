/**
 * Dashboard benchmark: 16 simulated VMs animating on 16 vGPUs of one daemon,
 * watched (or not) over the live WebSocket the dashboard uses.
 *
 * Phases, each one contended window of SECONDS with every VM rendering:
 * closed (nobody watching), open (16 thumbnails at the dashboard's default
 * scale 4 and 10 frames/s), full (16 full-size displays at 10 frames/s), and
 * closed again (drift). Per phase: frames/s and bytes/s per vGPU received on
 * the WebSocket, the daemon's CPU (whole process, its vGPU loop thread, its
 * web thread, from /proc), the VMs' aggregate frames/s, and the latency of a
 * trapped BAR2 read on a 17th vGPU (p50/p99), so the cost of watching shows
 * on both sides. Two last phases with the screens still (no VM rendering)
 * show trap latency on an otherwise quiet daemon, unwatched and watched.
 */
import { readFileSync } from "node:fs";
import { Worker } from "node:worker_threads";
import WebSocket from "ws";
import { DaemonProcess } from "../src/manager/process.js";
import { runVms } from "../src/vmm/sim/run.js";
import { type BenchFigure, type BenchReport, percentile } from "./report.js";

const SECONDS = 4;
const VGPUS = 16;
const TICK = 100; // USER_HZ: /proc times are in 1/100 s

/** utime + stime of a process or one of its threads, in seconds. */
function cpuSeconds(path: string): number {
  const stat = readFileSync(path, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICK;
}

interface Watch {
  frames: Map<string, number>;
  bytes: Map<string, number>;
  close(): void;
}

async function watch(url: string, uuids: string[], scale: number): Promise<Watch> {
  const ws = new WebSocket(`${url.replace("http", "ws")}/api/v1/live`);
  await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
  const frames = new Map(uuids.map((u) => [u, 0]));
  const bytes = new Map(uuids.map((u) => [u, 0]));
  ws.on("message", (data: Buffer, isBinary: boolean) => {
    if (!isBinary) return;
    const uuid = data.subarray(12, 48).toString("latin1");
    frames.set(uuid, (frames.get(uuid) ?? 0) + 1);
    bytes.set(uuid, (bytes.get(uuid) ?? 0) + data.length);
  });
  for (const u of uuids) ws.send(JSON.stringify({ subscribe: u, scale, fps: 10 }));
  return { frames, bytes, close: () => ws.close() };
}

interface Phase {
  readonly name: string;
  readonly fpsPerVgpu: number;
  readonly minFps: number;
  readonly bytesPerVgpu: number;
  readonly processCores: number;
  readonly loopCores: number;
  readonly webCores: number;
  readonly vmFps: number;
  readonly trapP50: number;
  readonly trapP99: number;
}

async function phase(
  name: string,
  daemon: DaemonProcess,
  vgpus: readonly { uuid: string; socket: string }[],
  probe: { uuid: string; socket: string },
  web: { pid: number; webThread: number },
  scale: number | undefined,
  animate = true,
): Promise<Phase> {
  const uuids = vgpus.map((v) => v.uuid);
  const watcher = scale ? await watch(daemon.http!, uuids, scale) : undefined;
  const go = new SharedArrayBuffer(4);
  const prober = new Worker(new URL("./trap-probe.js", import.meta.url), {
    workerData: { socket: probe.socket, seconds: SECONDS, go },
  });
  const probed = new Promise<number[]>((resolve, reject) => {
    prober.on("message", (m: { samples?: number[] }) => m.samples && resolve(m.samples));
    prober.on("error", reject);
  });
  const paths = {
    process: `/proc/${web.pid}/stat`,
    loop: `/proc/${web.pid}/task/${web.pid}/stat`,
    web: `/proc/${web.pid}/task/${web.webThread}/stat`,
  };
  let start: { t: number; cpu: Record<string, number>; frames: number[]; bytes: number[] } | undefined;
  let end: typeof start;
  const sample = () => ({
    t: performance.now(),
    cpu: Object.fromEntries(Object.entries(paths).map(([k, p]) => [k, cpuSeconds(p)])),
    frames: uuids.map((u) => watcher?.frames.get(u) ?? 0),
    bytes: uuids.map((u) => watcher?.bytes.get(u) ?? 0),
  });
  const onStart = () => {
    start = sample();
    Atomics.store(new Int32Array(go), 0, 1);
    Atomics.notify(new Int32Array(go), 0);
    setTimeout(() => (end = sample()), SECONDS * 1000);
  };
  const results = animate
    ? await runVms(
        vgpus.map((v, i) => ({ name: `vm${i}`, socket: v.socket, memoryModel: "kvm" as const })),
        { seconds: SECONDS, onStart },
      )
    : await new Promise<[]>((resolve) => {
        // Still screens (what earlier phases drew): the web thread looks at all 16, finds no change.
        setTimeout(onStart, 500);
        setTimeout(() => resolve([]), 500 + SECONDS * 1000 + 200);
      });
  const samples = (await probed).sort((a, b) => a - b);
  await prober.terminate();
  watcher?.close();
  const s = start!;
  const e = end ?? sample();
  const wall = (e.t - s.t) / 1000;
  const fps = e.frames.map((f, i) => (f - s.frames[i]!) / wall);
  const bytes = e.bytes.map((b, i) => (b - s.bytes[i]!) / wall);
  const cores = (k: string) => (e.cpu[k]! - s.cpu[k]!) / wall;
  for (const r of results) if (r.error) throw new Error(`${r.name}: ${r.error}`);
  return {
    name,
    fpsPerVgpu: fps.reduce((a, b) => a + b, 0) / fps.length,
    minFps: Math.min(...fps),
    bytesPerVgpu: bytes.reduce((a, b) => a + b, 0) / bytes.length,
    processCores: cores("process"),
    loopCores: cores("loop"),
    webCores: cores("web"),
    vmFps: results.reduce((n: number, r) => n + r.completedInTime, 0) / SECONDS,
    trapP50: percentile(samples, 50),
    trapP99: percentile(samples, 99),
  };
}

export async function run(): Promise<BenchReport> {
  const daemon = await DaemonProcess.start({
    vgpus: Array.from({ length: VGPUS + 1 }, () => "mgpu-1q"),
    args: ["--http", "127.0.0.1:0"],
  });
  try {
    const web = (await (await fetch(`${daemon.http}/api/v1/daemon`)).json()) as {
      pid: number;
      webThread: number;
    };
    const vgpus = daemon.vgpus.slice(0, VGPUS);
    const probe = daemon.vgpus[VGPUS]!;
    const phases: Phase[] = [];
    for (const [name, scale, animate] of [
      ["closed", undefined, true],
      ["open (thumbnails)", 4, true],
      ["open (full size)", 1, true],
      ["closed again", undefined, true],
      ["still, closed", undefined, false],
      ["still, open (full size)", 1, false],
      ["still, closed (2)", undefined, false],
      ["still, open (full size) (2)", 1, false],
    ] as const)
      phases.push(await phase(name, daemon, vgpus, probe, web, scale, animate));
    const closed = (phases[0]!.webCores + phases[3]!.webCores) / 2;
    const figures: BenchFigure[] = phases.flatMap((p) => [
      ...(p.name.includes("open") && !p.name.startsWith("still")
        ? [
            {
              metric: `${p.name}: frames/s per vGPU`,
              value: p.fpsPerVgpu,
              unit: "1/s",
              note: `min ${p.minFps.toFixed(1)}; cap 10, sent only when changed`,
            },
            { metric: `${p.name}: bytes/s per vGPU`, value: p.bytesPerVgpu / 1024, unit: "KiB/s" },
            {
              metric: `${p.name}: web thread CPU over closed`,
              value: 100 * (p.webCores - closed),
              unit: "% of a core",
              note: "target ≤ 10",
            },
          ]
        : []),
      { metric: `${p.name}: daemon process CPU`, value: 100 * p.processCores, unit: "% of a core" },
      { metric: `${p.name}: vGPU loop thread CPU`, value: 100 * p.loopCores, unit: "% of a core" },
      { metric: `${p.name}: web thread CPU`, value: 100 * p.webCores, unit: "% of a core" },
      ...(p.name.startsWith("still")
        ? []
        : [{ metric: `${p.name}: VMs' frames/s (all 16)`, value: p.vmFps, unit: "1/s" }]),
      { metric: `${p.name}: trap p50`, value: p.trapP50, unit: "µs" },
      { metric: `${p.name}: trap p99`, value: p.trapP99, unit: "µs" },
    ]);
    return { name: "dashboard", figures, details: { phases, seconds: SECONDS, vgpus: VGPUS } };
  } finally {
    await daemon.stop();
  }
}
