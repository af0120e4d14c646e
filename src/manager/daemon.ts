/**
 * The daemon behind `mgpu serve`: one parent GPU and its mediator, every vGPU
 * on its own vfio-user socket, all served from one loop (they share the
 * engine), definitions with autostart started at boot, and a control channel
 * (UNIX socket in the state directory, optionally stdin/stdout) for the
 * management commands.
 */
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { VfioUserMpt } from "../hypervisor/vfio-user.js";
import { Mediator, MediatorError, type Vgpu } from "../mediator/index.js";
import { type Logger, defaultLogger } from "../base/index.js";
import { type Endpoint, Server } from "../vfio-user/server.js";
import { ControlServer, type Reply, type Request, serveStdio } from "./control.js";
import { DefinitionStore } from "./definitions.js";

export interface DaemonOptions {
  readonly stateDir: string;
  /** Where vGPU sockets go (default: <stateDir>/vgpus). */
  readonly socketDir?: string;
  /** vGPUs to create at start, as type[:uuid]. */
  readonly vgpus?: readonly string[];
  /** Also answer control requests on stdin/stdout. */
  readonly stdio?: boolean;
  readonly watchdogMs?: number;
  readonly logger?: Logger;
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

export class Daemon {
  readonly mediator: Mediator;
  readonly server: Server;
  readonly definitions: DefinitionStore;
  readonly socketDir: string;
  /** Running vGPUs by UUID, with their endpoints (read by the web layer for metrics and frames). */
  readonly served = new Map<string, { vgpu: Vgpu; endpoint: Endpoint; socket: string }>();
  private readonly log: Logger;

  constructor(readonly options: DaemonOptions) {
    this.log = options.logger ?? defaultLogger(process.env.MGPU_LOG_LEVEL ?? "warn");
    const stateDir = resolve(options.stateDir);
    mkdirSync(stateDir, { recursive: true });
    this.socketDir = resolve(options.socketDir ?? join(stateDir, "vgpus"));
    mkdirSync(this.socketDir, { recursive: true });
    this.definitions = new DefinitionStore(stateDir);
    this.mediator = new Mediator({
      mpt: (device, hooks) => new VfioUserMpt(device, hooks),
      logger: this.log,
      ...(options.watchdogMs ? { scheduler: { timeBudgetMs: options.watchdogMs } } : {}),
    });
    this.server = new Server(undefined, {
      logger: this.log,
      afterRound: () => this.mediator.scheduler.tick(),
      // A busy host can delay a client's answer to DMA_READ/WRITE; give it time before failing the DMA.
      timeoutMs: 30_000,
    });
    new ControlServer(join(stateDir, "control.sock"), this.server, (r) => this.handle(r));
    if (options.stdio)
      serveStdio(
        this.server,
        (r) => this.handle(r),
        () => this.server.stop(),
      );
    const { definitions, broken } = this.definitions.load();
    for (const b of broken)
      this.log.warn({ file: b.file, reason: b.reason }, "skipping a broken vGPU definition");
    for (const d of definitions) {
      if (!d.autostart) continue;
      try {
        this.start(d.type, d.uuid);
      } catch (e) {
        this.log.warn({ uuid: d.uuid, err: String(e) }, "could not start a defined vGPU");
      }
    }
    for (const spec of options.vgpus ?? []) {
      const [type, uuid] = spec.split(":");
      this.start(type!, uuid);
    }
  }

  run(): void {
    this.server.run();
  }

  describe(): { uuid: string; type: string; socket: string; qemu: string[] }[] {
    return [...this.served.values()].map(({ vgpu, socket }) => ({
      uuid: vgpu.uuid,
      type: vgpu.type.name,
      socket,
      qemu: qemuArgs(socket),
    }));
  }

  private start(type: string, uuid?: string): { uuid: string; socket: string } {
    const vgpu = this.mediator.create(type, uuid);
    const socket = join(this.socketDir, `${vgpu.uuid}.sock`);
    try {
      this.served.set(vgpu.uuid, { vgpu, endpoint: this.server.addDevice(vgpu.pci, socket), socket });
    } catch (e) {
      this.mediator.remove(vgpu.uuid);
      throw e;
    }
    return { uuid: vgpu.uuid, socket };
  }

  private stop(uuid: string): void {
    const s = this.served.get(uuid);
    if (!s) throw new MediatorError("ENOENT", `vGPU ${uuid} is not running`);
    this.server.removeDevice(s.endpoint);
    this.mediator.remove(uuid);
    this.served.delete(uuid);
  }

  private entry(req: Request) {
    const uuid = String(req.uuid ?? "");
    const s = this.served.get(uuid);
    if (!s) throw new MediatorError("ENOENT", `vGPU ${uuid} is not running`);
    return s;
  }

  handle(req: Request): Reply {
    switch (req.cmd) {
      case "types":
        return {
          types: this.mediator.types.map((t) => ({
            ...t,
            availableInstances: this.mediator.availableInstances(t.name),
          })),
        };
      case "list":
      case "stats":
        return {
          vgpus: [...this.served.values()].map(({ vgpu, endpoint, socket }) => ({
            uuid: vgpu.uuid,
            type: vgpu.type.name,
            socket,
            defined: this.definitions.get(vgpu.uuid) !== undefined,
            stats: vgpu.stats,
            share:
              this.mediator.scheduler.totalBusyMs > 0
                ? vgpu.stats.busyMs / this.mediator.scheduler.totalBusyMs
                : 0,
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
        };
      case "create":
        return this.start(String(req.type ?? ""), typeof req.uuid === "string" ? req.uuid : undefined);
      case "start": {
        const d = this.definitions.get(String(req.uuid ?? ""));
        if (!d) throw new MediatorError("ENOENT", `vGPU ${String(req.uuid)} is not defined`);
        return this.start(d.type, d.uuid);
      }
      case "remove":
      case "stop":
        this.stop(String(req.uuid ?? ""));
        return { ok: true };
      case "qemu-args": {
        const s = this.entry(req);
        return { socket: s.socket, qemu: qemuArgs(s.socket) };
      }
      case "screenshot": {
        const s = this.entry(req);
        if (typeof req.path !== "string") throw new MediatorError("ENOENT", "screenshot needs a path");
        const frame = s.vgpu.scanout();
        writeFileSync(req.path, s.vgpu.screenshotPng());
        return { ok: true, width: frame.width, height: frame.height };
      }
      case "checksum":
        return { sha256: createHash("sha256").update(this.entry(req).vgpu.localMemory).digest("hex") };
      case "quit":
        this.server.stop();
        return { ok: true };
      default:
        return { error: `unknown command ${req.cmd}`, code: "EINVAL" };
    }
  }
}
