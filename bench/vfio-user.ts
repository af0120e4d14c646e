/**
 * vfio-user trap-path benchmark: REGION_READ round trip (p50/p99) and
 * REGION_WRITE throughput against the sample device in another process, and in
 * the same run the floor — two processes exchanging same-size messages through
 * src/sys with no protocol work. Rounds alternate protocol and floor so both
 * see the same machine noise; figures are medians over rounds.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { SocketChannel, connectUnix } from "../src/sys/index.js";
import { Client, PciRegion } from "../src/vfio-user/index.js";
import { type BenchReport, percentile } from "./report.js";
import { quietLogger } from "../src/base/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const ROUNDS = 5;
const RTT_SAMPLES = 20_000;
const HEADER = 16;
const ACCESS = 16;

async function spawnReady(script: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once("data", () => resolve());
    child.once("exit", (c) => reject(new Error(`${script} exited ${c}`)));
  });
  return child;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Round-trip latencies (µs) of `fn`, after a warm-up. */
function latencies(fn: () => void, n: number): Float64Array {
  for (let i = 0; i < 2000; i++) fn();
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    fn();
    out[i] = (performance.now() - t0) * 1000;
  }
  return out.sort();
}

/** Bytes per second moved by `fn(bytes)` over ~0.5 s. */
function throughput(fn: () => void, bytes: number): number {
  for (let i = 0; i < 20; i++) fn();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < 500) {
    fn();
    n++;
  }
  return (n * bytes) / ((performance.now() - t0) / 1000);
}

/** A raw peer: request of `req` bytes, reply of `rep` bytes. */
async function rawPeer(dir: string, name: string, req: number, rep: number) {
  const path = join(dir, `${name}.sock`);
  const child = await spawnReady(join(here, "echo-peer.js"), [path, String(req), String(rep)]);
  const ch = new SocketChannel(connectUnix(path), { capacity: Math.max(req, rep) + 4096 });
  const exchange = () => {
    ch.send(req);
    let got = 0;
    while (got < rep) got += ch.recv(got, rep - got, true);
  };
  return { exchange, close: () => (ch.close(), child.kill()) };
}

export async function run(): Promise<BenchReport> {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-bench-"));
  const serverPath = join(dir, "device.sock");
  const server = await spawnReady(join(here, "..", "test", "fixtures", "serve-sample.js"), [serverPath]);
  const quiet = quietLogger;
  const client = Client.connect(serverPath, { logger: quiet });
  const out4 = new Uint8Array(4);
  const readReg = () => client.regionRead(PciRegion.BAR0, 0x04, out4);

  const readFloor = await rawPeer(dir, "floor-read", HEADER + ACCESS, HEADER + ACCESS + 4);
  const sizes = [4096, 1 << 20];
  const writeFloors = await Promise.all(
    sizes.map((s) => rawPeer(dir, `floor-write-${s}`, HEADER + ACCESS + s, HEADER + ACCESS)),
  );
  const payloads = sizes.map((s) => new Uint8Array(s).fill(0x5a));

  const p50 = { proto: [] as number[], floor: [] as number[] };
  const p99 = { proto: [] as number[], floor: [] as number[] };
  const write = sizes.map(() => ({ proto: [] as number[], floor: [] as number[] }));
  for (let round = 0; round < ROUNDS; round++) {
    const a = latencies(readReg, RTT_SAMPLES);
    const b = latencies(readFloor.exchange, RTT_SAMPLES);
    p50.proto.push(percentile(a, 50));
    p99.proto.push(percentile(a, 99));
    p50.floor.push(percentile(b, 50));
    p99.floor.push(percentile(b, 99));
    sizes.forEach((s, i) => {
      write[i]!.proto.push(throughput(() => client.regionWrite(PciRegion.BAR2, 0, payloads[i]!), s));
      write[i]!.floor.push(throughput(writeFloors[i]!.exchange, s));
    });
  }
  client.close();
  readFloor.close();
  for (const f of writeFloors) f.close();
  server.kill();
  rmSync(dir, { recursive: true, force: true });

  const mb = (x: number) => x / 1e6;
  const ratio = median(p50.proto) / median(p50.floor);
  return {
    name: "vfio-user",
    figures: [
      { metric: "REGION_READ 4 B round trip p50", value: median(p50.proto), unit: "µs" },
      { metric: "REGION_READ 4 B round trip p99", value: median(p99.proto), unit: "µs" },
      {
        metric: "floor: 32 B / 36 B exchange p50",
        value: median(p50.floor),
        unit: "µs",
        note: "src/sys only",
      },
      { metric: "floor: 32 B / 36 B exchange p99", value: median(p99.floor), unit: "µs" },
      { metric: "round trip p50 / floor p50", value: ratio, unit: "×", note: "target ≤ 1.5" },
      ...sizes.flatMap((s, i) => [
        {
          metric: `REGION_WRITE ${s >= 1 << 20 ? "1 MiB" : "4 KiB"} throughput`,
          value: mb(median(write[i]!.proto)),
          unit: "MB/s",
        },
        {
          metric: `floor: ${s >= 1 << 20 ? "1 MiB" : "4 KiB"} message + ack`,
          value: mb(median(write[i]!.floor)),
          unit: "MB/s",
        },
        {
          metric: `REGION_WRITE ${s >= 1 << 20 ? "1 MiB" : "4 KiB"} / floor`,
          value: median(write[i]!.proto) / median(write[i]!.floor),
          unit: "×",
        },
      ]),
    ],
    details: { rounds: ROUNDS, samplesPerRound: RTT_SAMPLES, p50, p99, write },
  };
}
