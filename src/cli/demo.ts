/**
 * `mgpu demo`: the whole stack on one machine with no VMM to install. A daemon
 * process runs a parent GPU and one vGPU per VM; each simulated VM runs on its
 * own thread (guest RAM, a physical address map, the vfio-user client, the
 * guest driver) rendering an animated desktop. At the end: a table per VM, a
 * PNG of each display, and every final frame checked against the native
 * driver's rendering of the same frame. Exit 0 only if every VM rendered right.
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { join, resolve } from "node:path";
import { encodeOps } from "../abi/index.js";
import { NativeDriver, SoftwareGpu, desktopFrame, pngToFrame } from "../gpu/index.js";
import { runVms } from "../vmm/sim/run.js";
import type { MemoryModel } from "../vmm/sim/vm.js";
import { defaultTypes } from "../mediator/types.js";
import type { Request } from "../manager/control.js";
import { DaemonProcess } from "../manager/process.js";

export interface DemoOptions {
  readonly types: readonly string[];
  readonly seconds: number;
  readonly outDir: string;
  readonly memoryModel: MemoryModel | "mixed";
  /** VM indexes whose guest driver misbehaves. */
  readonly hostile?: readonly number[];
  /** Desktop frames per submission. */
  readonly work?: number;
  /** Serve the dashboard (and API) at this address while the demo runs, and open it. */
  readonly dashboard?: { readonly host: string; readonly port: number };
}

/** Opens a URL in the desktop's browser, if there is a desktop; never fails the demo. */
function openInBrowser(url: string): void {
  if (!process.env.DISPLAY && !process.env.WAYLAND_DISPLAY) return;
  const child = spawn("xdg-open", [url], { stdio: "ignore", detached: true });
  child.on("error", () => {});
  child.unref();
}

export async function demo(options: DemoOptions): Promise<number> {
  const outDir = resolve(options.outDir);
  mkdirSync(outDir, { recursive: true });
  // Rejections of the hostile VM are counted in the table; the daemon's log keeps to errors.
  const d = options.dashboard;
  const daemon = await DaemonProcess.start({
    vgpus: options.types,
    ...(d ? { args: ["--http", `${d.host.includes(":") ? `[${d.host}]` : d.host}:${d.port}`] } : {}),
  });
  try {
    if (daemon.http) {
      console.log(`dashboard: ${daemon.http}/`);
      openInBrowser(`${daemon.http}/`);
    }
    const request = (cmd: Request) => daemon.request(cmd);
    const vgpus = daemon.vgpus;
    const model = (i: number): MemoryModel =>
      options.memoryModel === "mixed" ? (i % 2 ? "xen" : "kvm") : options.memoryModel;
    const progress = new Map<string, number>();
    let start = 0;
    const results = await runVms(
      vgpus.map((v, i) => ({
        name: `vm${i}`,
        socket: v.socket,
        memoryModel: model(i),
        hostile: options.hostile?.includes(i) ?? false,
      })),
      {
        seconds: options.seconds,
        work: options.work ?? 1,
        onProgress: (name, frames) => {
          start ||= Date.now();
          progress.set(name, frames);
          const t = (Date.now() - start) / 1000 + 0.2;
          const line = [...progress.entries()].map(([n, f]) => `${n} ${(f / t).toFixed(0)} fps`).join("  ");
          // A live line only for a person watching; logs and pipes get the table alone.
          if (process.stderr.isTTY) process.stderr.write(`\r${t.toFixed(1)} s  ${line}   `);
        },
      },
    );
    if (process.stderr.isTTY) process.stderr.write("\n");
    const stats = (await request({ cmd: "stats" })).vgpus as {
      uuid: string;
      share: number;
      stats: Record<string, number>;
    }[];
    const weight = (type: string) => defaultTypes.find((t) => t.name === type)?.weight ?? 1;
    const weights = vgpus.reduce((n, v) => n + weight(v.type), 0);
    const rows = [
      [
        "VM",
        "vGPU",
        "type",
        "memory",
        "frames",
        "fps",
        "traps",
        "irqs",
        "GTT upd",
        "rejected",
        "share",
        "weight",
        "pixels",
      ],
    ];
    let ok = true;
    for (const [i, v] of vgpus.entries()) {
      const r = results[i]!;
      const s = stats.find((x) => x.uuid === v.uuid)!;
      const png = join(outDir, `vm${i}-${v.uuid}.png`);
      const shot = await request({ cmd: "screenshot", uuid: v.uuid });
      const bytes = typeof shot.png === "string" ? Buffer.from(shot.png, "base64") : undefined;
      if (bytes) writeFileSync(png, bytes);
      const right = !r.error && r.frames > 0 && !!bytes && samePixels(pngToFrame(bytes).rgba, r.lastSeed);
      ok &&= right;
      rows.push([
        `vm${i}${options.hostile?.includes(i) ? " (hostile)" : ""}`,
        v.uuid.slice(0, 8),
        v.type,
        model(i),
        String(r.frames),
        (r.frames / options.seconds).toFixed(1),
        String(s.stats.traps),
        String(s.stats.interrupts),
        String(s.stats.gttUpdates),
        String(s.stats.rejected),
        `${(100 * s.share).toFixed(1)}%`,
        `${((100 * weight(v.type)) / weights).toFixed(1)}%`,
        r.error ? `ERROR ${r.error}` : right ? "ok" : "WRONG",
      ]);
    }
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const r of rows)
      console.log(
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join("  ")
          .trimEnd(),
      );
    console.log(`PNGs in ${outDir}`);
    if (daemon.http && process.stdin.isTTY) {
      // The last frames stay on the dashboard until the viewer is done.
      const rl = createInterface({ input: process.stdin, output: process.stdout });
      await new Promise<void>((resolve) =>
        rl.question(`dashboard still at ${daemon.http}/ — Enter ends the demo `, () => resolve()),
      );
      rl.close();
    }
    await request({ cmd: "quit" });
    return ok ? 0 : 1;
  } finally {
    process.stderr.write(daemon.stderr);
    await daemon.stop();
  }
}

/** The native driver's rendering of desktop frame `seed` (what a simulated VM's last frame must equal). */
export function nativeDesktopFrame(seed: number): Uint8Array {
  const gpu = new SoftwareGpu({ localMemorySize: 64 << 20, gttEntries: 16 << 10 });
  const drv = new NativeDriver(gpu, { size: 48 << 20 });
  const s = drv.prepare(desktopFrame(1));
  drv.submitBatch(encodeOps(desktopFrame(seed).ops, s));
  drv.modeSet(s.screen!);
  const expected = gpu.scanout().rgba;
  gpu.close();
  return expected;
}

/** Compared pixel for pixel with the native driver's rendering of the same frame. */
function samePixels(rgba: Uint8Array, seed: number): boolean {
  const expected = nativeDesktopFrame(seed);
  return expected.length === rgba.length && expected.every((b, i) => b === rgba[i]);
}
