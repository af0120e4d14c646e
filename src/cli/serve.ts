/**
 * `mgpu serve`: a parent GPU, the requested vGPUs, each on its own vfio-user
 * socket, all served from one loop (they share the engine). Prints the QEMU
 * options that attach each. With --control, JSON-line commands on stdin
 * (stats, screenshot, quit) are answered on stdout from the same loop.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Mediator, type Vgpu } from "../mediator/index.js";
import { VfioUserMpt } from "../hypervisor/vfio-user.js";
import { type Endpoint, Server } from "../vfio-user/server.js";
import { defaultLogger } from "../vfio-user/log.js";

export interface ServeOptions {
  readonly vgpus: readonly string[];
  readonly socketDir: string;
  readonly control: boolean;
  /** Watchdog: longest a workload may run (ms). */
  readonly watchdogMs?: number;
}

export function qemuArgs(socket: string): string[] {
  return [
    "-object",
    "memory-backend-memfd,id=mem,size=<guest RAM>,share=on",
    "-machine",
    "q35,memory-backend=mem",
    "-device",
    JSON.stringify({ driver: "vfio-user-pci", socket: { path: socket, type: "unix" } }),
  ];
}

export function serve(options: ServeOptions): void {
  const logger = defaultLogger(process.env.MGPU_LOG_LEVEL ?? "warn");
  const mediator = new Mediator({
    logger,
    ...(options.watchdogMs ? { scheduler: { timeBudgetMs: options.watchdogMs } } : {}),
  });
  const dir = resolve(options.socketDir);
  mkdirSync(dir, { recursive: true });
  const server = new Server(undefined, {
    logger,
    afterRound: () => mediator.scheduler.tick(),
  });
  const served: { vgpu: Vgpu; endpoint: Endpoint; socket: string }[] = [];
  for (const spec of options.vgpus) {
    const [type, uuid] = spec.split(":");
    const vgpu = mediator.create(type!, uuid);
    const socket = join(dir, `${vgpu.uuid}.sock`);
    served.push({ vgpu, endpoint: server.addDevice(vgpu.pci, socket), socket });
  }
  const describe = () =>
    served.map(({ vgpu, socket }) => ({
      uuid: vgpu.uuid,
      type: vgpu.type.name,
      socket,
      qemu: qemuArgs(socket),
    }));
  if (options.control) {
    reply({ event: "ready", vgpus: describe() });
    let pending = "";
    server.watch(0, () => {
      const buf = Buffer.alloc(65536);
      const n = readSync(0, buf, 0, buf.length, null);
      if (n === 0) return server.stop();
      pending += buf.subarray(0, n).toString();
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        if (line) control(line);
      }
    });
  } else {
    for (const d of describe()) {
      console.log(`vGPU ${d.uuid} (${d.type}) on ${d.socket}`);
      console.log(
        `  qemu-system-x86_64 ... ${d.qemu.map((a) => (a.includes(" ") || a.includes("{") ? `'${a}'` : a)).join(" ")}`,
      );
    }
  }
  server.run();

  function control(line: string): void {
    let req: { cmd?: string; uuid?: string; path?: string };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      return reply({ error: "not JSON" });
    }
    const entry = served.find((s) => s.vgpu.uuid === req.uuid);
    switch (req.cmd) {
      case "stats":
        return reply({
          vgpus: served.map(({ vgpu, endpoint }) => ({
            uuid: vgpu.uuid,
            type: vgpu.type.name,
            stats: vgpu.stats,
            error: vgpu.error,
            explicitFrameMaps: vgpu.mpt instanceof VfioUserMpt ? vgpu.mpt.maps : 0,
            regionReads: Array.from(endpoint.stats.regionReads.subarray(0, 9)),
            regionWrites: Array.from(endpoint.stats.regionWrites.subarray(0, 9)),
            display: {
              width: vgpu.display.width,
              height: vgpu.display.height,
              enabled: vgpu.display.enabled,
            },
          })),
        });
      case "screenshot": {
        if (!entry || !req.path) return reply({ error: "screenshot needs a known uuid and a path" });
        const frame = entry.vgpu.scanout();
        writeFileSync(req.path, entry.vgpu.screenshotPng());
        return reply({ ok: true, width: frame.width, height: frame.height });
      }
      case "checksum": {
        if (!entry) return reply({ error: "checksum needs a known uuid" });
        return reply({ sha256: createHash("sha256").update(entry.vgpu.localMemory).digest("hex") });
      }
      case "quit":
        reply({ ok: true });
        return server.stop();
      default:
        return reply({ error: `unknown command ${String(req.cmd)}` });
    }
  }
}

function reply(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + "\n");
}
