/**
 * Daemon loop benchmark: the BAR2 trap round trip through `mgpu serve` (the
 * async outer loop that returns to Node's event loop every slice, so signals
 * and the control channel are served), and how long SIGTERM takes to a clean
 * exit. With MGPU_BENCH_BASELINE_CLI=<other checkout>/dist/src/cli/main.js the
 * same trap figures are taken from that build too, rounds alternating, and
 * reported as a ratio (for comparing with the blocking loop it replaced).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { ClientBus } from "../src/vmm/client-bus.js";
import { GuestDriver } from "../src/guest/index.js";
import { Client } from "../src/vfio-user/index.js";
import { quietLogger } from "../src/base/index.js";
import { requestDaemon } from "../src/manager/control.js";
import { type BenchFigure, type BenchReport, percentile } from "./report.js";

const ours = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "cli", "main.js");
const ROUNDS = 4;
const SAMPLES = 4000;

interface Served {
  readonly child: ChildProcess;
  readonly socket: string;
  readonly dir: string;
}

async function serve(cli: string, dir = mkdtempSync(join(tmpdir(), "mgpu-bench-daemon-"))): Promise<Served> {
  const child = spawn(
    process.execPath,
    [cli, "--state-dir", dir, "serve", "--control", "--vgpu", "mgpu-1q"],
    {
      stdio: ["pipe", "pipe", "inherit"],
      env: { ...process.env, MGPU_LOG_LEVEL: "error" },
    },
  );
  const line = await new Promise<string>((resolve) =>
    createInterface({ input: child.stdout! }).once("line", resolve),
  );
  const ready = JSON.parse(line) as { vgpus: { socket: string }[] };
  return { child, socket: ready.vgpus[0]!.socket, dir };
}

async function stop(s: Served, signal: NodeJS.Signals): Promise<number> {
  const exited = new Promise((r) => s.child.once("exit", r));
  const t0 = performance.now();
  s.child.kill(signal);
  await exited;
  const ms = performance.now() - t0;
  rmSync(s.dir, { recursive: true, force: true });
  return ms;
}

function trapRoundTrips(bus: ClientBus, out: number[]): void {
  for (let i = 0; i < 200; i++) bus.mmioRead(2, 0x2010, 4);
  for (let i = 0; i < SAMPLES; i++) {
    const t0 = performance.now();
    bus.mmioRead(2, 0x2010, 4);
    out.push((performance.now() - t0) * 1000);
  }
}

export async function run(): Promise<BenchReport> {
  const baseline = process.env.MGPU_BENCH_BASELINE_CLI;
  const builds = baseline ? { ours, baseline } : { ours };
  const samples: Record<string, number[]> = {};
  const served: Record<string, { s: Served; client: Client; bus: ClientBus }> = {};
  for (const [name, cli] of Object.entries(builds)) {
    const s = await serve(cli);
    const client = Client.connect(s.socket, { logger: quietLogger });
    const bus = new ClientBus(client);
    new GuestDriver(bus).init(); // BARs assigned, memory decoding on
    served[name] = { s, client, bus };
    samples[name] = [];
  }
  for (let round = 0; round < ROUNDS; round++)
    for (const name of Object.keys(builds)) trapRoundTrips(served[name]!.bus, samples[name]!);
  const figures: BenchFigure[] = [];
  for (const name of Object.keys(builds)) {
    const sorted = Float64Array.from(samples[name]!).sort();
    figures.push({ metric: `BAR2 trap round trip p50 (${name})`, value: percentile(sorted, 50), unit: "µs" });
    figures.push({ metric: `BAR2 trap round trip p99 (${name})`, value: percentile(sorted, 99), unit: "µs" });
  }
  if (baseline) {
    const p = (name: string, q: number) => percentile(Float64Array.from(samples[name]!).sort(), q);
    figures.push({
      metric: "trap p50: ours / baseline",
      value: p("ours", 50) / p("baseline", 50),
      unit: "×",
    });
    figures.push({
      metric: "trap p99: ours / baseline",
      value: p("ours", 99) / p("baseline", 99),
      unit: "×",
    });
  }
  for (const { client } of Object.values(served)) client.close();
  for (const [name, { s }] of Object.entries(served)) {
    const ms = await stop(s, name === "ours" ? "SIGTERM" : "SIGKILL");
    if (name === "ours")
      figures.push({
        metric: "SIGTERM to exit 0 (sockets removed)",
        value: ms,
        unit: "ms",
        note: "incl. process teardown",
      });
  }
  // A `stats` request with 3,000 definition files in the state dir (one defined vGPU running).
  for (const [name, cli] of Object.entries(builds)) {
    const dir = mkdtempSync(join(tmpdir(), "mgpu-bench-defs-"));
    mkdirSync(join(dir, "definitions"), { recursive: true });
    for (let i = 0; i < 3000; i++) {
      const uuid = `de000000-0000-4000-8000-${i.toString(16).padStart(12, "0")}`;
      writeFileSync(
        join(dir, "definitions", `${uuid}.json`),
        JSON.stringify({ uuid, type: "mgpu-1q", autostart: false }),
      );
    }
    const s = await serve(cli, dir);
    const ms: number[] = [];
    for (let i = 0; i < 30; i++) {
      const t0 = performance.now();
      requestDaemon(join(dir, "control.sock"), { cmd: "stats" });
      ms.push(performance.now() - t0);
    }
    ms.sort((a, b) => a - b);
    figures.push({
      metric: `stats request, 3,000 definitions, median (${name})`,
      value: ms[15]!,
      unit: "ms",
      note: "client round trip",
    });
    await stop(s, "SIGKILL");
  }
  return { name: "daemon", figures };
}
