/**
 * `mgpu demo`: the whole stack on one machine with no VMM to install. A
 * server process runs a parent GPU with several vGPUs (as `mgpu serve`);
 * this process plays the VMs: one guest driver per vGPU, each reaching its
 * vGPU through the vfio-user client, rendering animated desktop frames for a
 * while. At the end: a table per vGPU, a PNG of each display, and a check of
 * every final frame against the native driver's rendering of the same frame.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { NativeDriver, SoftwareGpu, type Surface, desktopFrame, encodeOps } from "../gpu/index.js";
import { GuestDriver } from "../guest/index.js";
import { ClientBus } from "../hypervisor/client-bus.js";
import { Client } from "../vfio-user/index.js";

export interface DemoOptions {
  readonly types: readonly string[];
  readonly seconds: number;
  readonly outDir: string;
}

interface Vm {
  readonly uuid: string;
  readonly type: string;
  readonly client: Client;
  readonly bus: ClientBus;
  readonly driver: GuestDriver;
  readonly surfaces: Record<string, Surface>;
  frames: number;
  seed: number;
}

const here = dirname(fileURLToPath(import.meta.url));

export async function demo(options: DemoOptions): Promise<number> {
  const sockets = mkdtempSync(join(tmpdir(), "mgpu-demo-"));
  const outDir = resolve(options.outDir);
  mkdirSync(outDir, { recursive: true });
  const server = spawn(
    process.execPath,
    [
      join(here, "main.js"),
      "--state-dir",
      sockets,
      "serve",
      "--control",
      "--socket-dir",
      sockets,
      ...options.types.flatMap((t) => ["--vgpu", t]),
    ],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: server.stdout! });
  const replies: ((v: Record<string, unknown>) => void)[] = [];
  const first = await new Promise<Record<string, unknown>>((r) =>
    lines.once("line", (l) => r(JSON.parse(l) as Record<string, unknown>)),
  );
  lines.on("line", (l) => replies.shift()?.(JSON.parse(l) as Record<string, unknown>));
  const request = (cmd: Record<string, unknown>) =>
    new Promise<Record<string, unknown>>((r) => {
      replies.push(r);
      server.stdin!.write(JSON.stringify(cmd) + "\n");
    });
  const quiet = { error() {}, warn() {}, info() {}, debug() {} };
  const vms: Vm[] = (first.vgpus as { uuid: string; type: string; socket: string }[]).map((v, i) => {
    const client = Client.connect(v.socket, { logger: quiet });
    const bus = new ClientBus(client);
    const driver = new GuestDriver(bus);
    driver.init(0xc0000000 + i * 0x10000000);
    const surfaces = driver.prepare(desktopFrame(1), true);
    driver.modeSet(surfaces.screen!);
    return { uuid: v.uuid, type: v.type, client, bus, driver, surfaces, frames: 0, seed: 1 };
  });

  // Animate: every VM renders a new desktop frame in turn until time is up.
  const start = performance.now();
  const end = start + options.seconds * 1000;
  let lastLine = 0;
  while (performance.now() < end) {
    for (const vm of vms) {
      vm.seed = vm.frames + 1;
      const frame = desktopFrame(vm.seed);
      vm.driver.execute(encodeOps(frame.ops, vm.surfaces));
      vm.frames++;
    }
    if (performance.now() - lastLine > 250) {
      lastLine = performance.now();
      const elapsed = (performance.now() - start) / 1000;
      process.stderr.write(
        `\r${elapsed.toFixed(1)} s  ` +
          vms.map((v) => `${v.type} ${(v.frames / elapsed).toFixed(0)} fps`).join("  ") +
          "   ",
      );
    }
  }
  process.stderr.write("\n");
  const seconds = (performance.now() - start) / 1000;

  // Check every final frame against the native driver, save the PNGs, print the table.
  const stats = (await request({ cmd: "stats" })).vgpus as { uuid: string; stats: Record<string, number> }[];
  const total = stats.reduce((n, s) => n + s.stats.busyMs!, 0);
  let ok = true;
  const rows: string[][] = [
    [
      "vGPU",
      "type",
      "frames",
      "fps",
      "traps",
      "irqs",
      "GTT upd",
      "rejected",
      "share",
      "weight share",
      "pixels",
    ],
  ];
  const weights: Record<string, number> = { "mgpu-1q": 1, "mgpu-2q": 2, "mgpu-4q": 4 };
  const weightSum = vms.reduce((n, v) => n + (weights[v.type] ?? 1), 0);
  for (const vm of vms) {
    const png = join(outDir, `${vm.uuid}.png`);
    await request({ cmd: "screenshot", uuid: vm.uuid, path: png });
    const same = matchesNative(desktopFrame(vm.seed), vm);
    ok &&= same;
    const s = stats.find((x) => x.uuid === vm.uuid)!.stats;
    rows.push([
      vm.uuid.slice(0, 8),
      vm.type,
      String(vm.frames),
      (vm.frames / seconds).toFixed(1),
      String(s.traps),
      String(s.interrupts),
      String(s.gttUpdates),
      String(s.rejected),
      `${((100 * s.busyMs!) / total).toFixed(1)}%`,
      `${((100 * (weights[vm.type] ?? 1)) / weightSum).toFixed(1)}%`,
      same ? "ok" : "WRONG",
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  "));
  console.log(`PNGs in ${outDir}`);
  for (const vm of vms) {
    vm.bus.close();
    vm.client.close();
  }
  await request({ cmd: "quit" }).catch(() => undefined);
  server.kill();
  rmSync(sockets, { recursive: true, force: true });
  return ok ? 0 : 1;
}

/** Renders the same frame with the native driver and compares the screen pixel for pixel. */
function matchesNative(frame: ReturnType<typeof desktopFrame>, vm: Vm): boolean {
  const gpu = new SoftwareGpu({ localMemorySize: 64 << 20, gttEntries: 16 << 10 });
  const drv = new NativeDriver(gpu, { size: 48 << 20 });
  const s = drv.prepare(desktopFrame(1));
  drv.submitBatch(encodeOps(frame.ops, s));
  const expected = new Uint32Array(gpu.localMemory.words.buffer, s.screen!.gma, 1280 * 800);
  const fb = vm.bus.barMemory(0)!;
  const offset = vm.surfaces.screen!.gma - vm.driver.partition.gmBase;
  const actual = new Uint32Array(fb.buffer, fb.byteOffset + offset, 1280 * 800);
  let same = true;
  for (let i = 0; i < expected.length && same; i++) same = expected[i] === actual[i];
  gpu.close();
  return same;
}
