/**
 * The daemon behind `mgpu serve`: one parent GPU and its mediator, every vGPU
 * on its own vfio-user socket, all served from one loop (they share the
 * engine), definitions with autostart started at boot, and a control channel
 * (UNIX socket in the state directory, optionally stdin/stdout).
 *
 * Life cycle: `open()` takes the state directory's lock (one daemon per state
 * dir), replaces stale sockets (refusing live ones), binds everything 0600 and
 * starts the autostart vGPUs; `run()` serves until `stop()` (the `quit`
 * request, SIGTERM/SIGINT through the CLI, end of stdin in --control mode),
 * then asks attached VMMs to release their vGPU (REQ), closes every
 * connection, removes its sockets and releases the lock.
 *
 * `handle(request)` is the one public entry for management: the control
 * socket, stdin and any other front end (an HTTP API) call it with a request
 * object and get a reply object; errors are thrown as ManagerError/MgpuError
 * with a stable code.
 */
import { createHash } from "node:crypto";
import { join, resolve } from "node:path";
import { VfioUserMpt } from "../hypervisor/vfio-user.js";
import { Mediator, type Vgpu } from "../mediator/index.js";
import { type Logger, defaultLogger } from "../base/index.js";
import { type Endpoint, Server } from "../vfio-user/server.js";
import { ControlServer, type Reply, type Request, serveStdio } from "./control.js";
import { DefinitionStore } from "./definitions.js";
import { ManagerError } from "./errors.js";
import { StateLock } from "./lock.js";
import { serveRounds } from "./loop.js";
import { sdNotify } from "./notify.js";
import { ensurePrivateDir, openDirToGroup } from "./paths.js";
import { type SocketAccess, bindPrivate, claimSocketPath } from "./sockets.js";
import { checkRequest, checkType, checkUuid, parseVgpuSpec } from "./validate.js";

/**
 * Least time between two looks for a waiting client message from the engine
 * loop. The scheduler asks after every band of blit work, and a poll(2) costs
 * about a third of a fast 256 KiB band (fill-8M ran at 0.8 of native instead
 * of 0.96); a message waits at most this much longer to end a slice.
 */
const YIELD_POLL_MS = 0.05;

/** `check`, asked at most once per `ms`: in between, false (nothing seen waiting). */
function pollAtMostEvery(ms: number, check: () => boolean): () => boolean {
  let last = -Infinity;
  return () => {
    const now = performance.now();
    if (now - last < ms) return false;
    last = now;
    return check();
  };
}

export interface DaemonOptions {
  readonly stateDir: string;
  /** Where vGPU sockets go (default: <stateDir>/vgpus). */
  readonly socketDir?: string;
  /** vGPUs to create at start, as type[:uuid]. */
  readonly vgpus?: readonly string[];
  /** Also answer control requests on stdin/stdout (the daemon stops when stdin ends). */
  readonly stdio?: boolean;
  readonly watchdogMs?: number;
  /** Who besides our uid may connect (sockets 0660 to that group). */
  readonly access?: SocketAccess;
  /** How long `remove --force` waits for a VMM to let go after the REQ interrupt. */
  readonly releaseTimeoutMs?: number;
  readonly logger?: Logger;
}

/** What the text `list` shows per vGPU. */
export type VgpuState = "idle" | "attached" | "error";

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

interface Served {
  readonly vgpu: Vgpu;
  readonly endpoint: Endpoint;
  readonly socket: string;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Daemon {
  readonly mediator: Mediator;
  readonly server: Server;
  readonly definitions: DefinitionStore;
  readonly stateDir: string;
  readonly socketDir: string;
  readonly controlPath: string;
  /** Running vGPUs by UUID, with their endpoints (read by the web layer for metrics and frames). */
  readonly served = new Map<string, Served>();
  private readonly log: Logger;
  private readonly lock: StateLock;
  private control: ControlServer | undefined;
  private closeStdio: (() => void) | undefined;
  /** Set when a control client has input: the loop hands over to Node's event loop. */
  private controlInput = false;
  private stopReason: string | undefined;

  /** Takes the state directory and binds every socket; throws ManagerError (ELOCKED, EADDRINUSE…) if it cannot. */
  static open(options: DaemonOptions): Daemon {
    return new Daemon(options);
  }

  private constructor(readonly options: DaemonOptions) {
    this.log = options.logger ?? defaultLogger(process.env.MGPU_LOG_LEVEL ?? "warn");
    this.stateDir = resolve(options.stateDir);
    ensurePrivateDir(this.stateDir, this.log);
    this.lock = StateLock.acquire(this.stateDir);
    try {
      this.socketDir = resolve(options.socketDir ?? join(this.stateDir, "vgpus"));
      ensurePrivateDir(this.socketDir, this.log);
      const gid = options.access?.gid;
      if (gid !== undefined)
        for (const dir of new Set([this.stateDir, this.socketDir])) openDirToGroup(dir, gid);
      this.definitions = new DefinitionStore(this.stateDir);
      this.definitions.watch(); // listed per request: looked at again only when the folder changes
      this.mediator = new Mediator({
        mpt: (device, hooks) => new VfioUserMpt(device, hooks),
        logger: this.log,
        scheduler: {
          ...(options.watchdogMs ? { timeBudgetMs: options.watchdogMs } : {}),
          // Engine slices and scanning end early when a client's message is waiting.
          yieldTo: pollAtMostEvery(YIELD_POLL_MS, () => this.server.inputPending()),
        },
      });
      this.server = new Server(undefined, {
        logger: this.log,
        afterRound: () => this.mediator.scheduler.tick(),
        // A busy host can delay a client's answer to DMA_READ/WRITE; give it time before failing the DMA.
        timeoutMs: 30_000,
      });
      this.controlPath = join(this.stateDir, "control.sock");
      this.control = new ControlServer(this.controlPath, this.server, (r) => this.handle(r), {
        logger: this.log,
        onInput: () => (this.controlInput = true),
        ...(options.access ? { access: options.access } : {}),
      });
      if (options.stdio)
        serveStdio(
          (r) => this.handle(r),
          () => this.stop("end of control input"),
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
        const { type, uuid } = parseVgpuSpec(spec);
        this.start(type, uuid);
      }
    } catch (e) {
      this.closeAll();
      throw e;
    }
  }

  /** Serves until stop(), then shuts down cleanly. */
  async run(): Promise<void> {
    sdNotify("READY=1", this.log);
    await serveRounds(this.server, () => {
      const turn = this.controlInput;
      this.controlInput = false;
      return turn;
    });
    await this.shutdown();
  }

  /** Ends run() after the current round (safe from a signal handler or a request). */
  stop(reason: string): void {
    this.stopReason ??= reason;
    this.server.stop();
  }

  describe(): { uuid: string; type: string; socket: string; qemu: string[] }[] {
    return [...this.served.values()].map(({ vgpu, socket }) => ({
      uuid: vgpu.uuid,
      type: vgpu.type.name,
      socket,
      qemu: qemuArgs(socket),
    }));
  }

  /** idle, attached (a VMM owns it) or error (its engine error register is set). */
  private stateOf({ vgpu, endpoint }: Served): VgpuState {
    if (vgpu.error !== 0) return "error";
    return endpoint.ownerAttached ? "attached" : "idle";
  }

  private start(type: string, uuid?: string): { uuid: string; socket: string } {
    checkType(type);
    if (uuid !== undefined) checkUuid(uuid);
    if (uuid !== undefined && this.served.has(uuid))
      throw new ManagerError("EEXIST", `vGPU ${uuid} is already running`);
    const vgpu = this.mediator.create(type, uuid);
    const socket = join(this.socketDir, `${vgpu.uuid}.sock`);
    try {
      claimSocketPath(socket);
      const endpoint = bindPrivate(socket, this.options.access ?? {}, () =>
        this.server.addDevice(vgpu.pci, socket),
      );
      this.served.set(vgpu.uuid, { vgpu, endpoint, socket });
    } catch (e) {
      this.mediator.remove(vgpu.uuid);
      throw e;
    }
    return { uuid: vgpu.uuid, socket };
  }

  /**
   * Stops serving a vGPU. One a VMM holds is refused (EBUSY) unless `force`:
   * then the VMM is asked to release it (the REQ interrupt, as VFIO does) and
   * given releaseTimeoutMs to close; whatever is still connected then is cut.
   */
  private async stopVgpu(uuid: string, force: boolean): Promise<Reply> {
    const s = this.entry(uuid);
    let released = true;
    if (s.endpoint.ownerAttached) {
      if (!force)
        throw new ManagerError(
          "EBUSY",
          `vGPU ${uuid} is attached to a VMM; detach it first, or use --force to ask the VMM to release it`,
        );
      s.vgpu.pci.irqs.requestRelease();
      const deadline = Date.now() + (this.options.releaseTimeoutMs ?? 5000);
      while (s.endpoint.ownerAttached && Date.now() < deadline) await sleep(10);
      released = !s.endpoint.ownerAttached;
      if (!released) this.log.warn({ uuid }, "VMM did not release the vGPU in time; disconnecting it");
    }
    if (this.served.get(uuid) !== s) return { ok: true, released };
    this.server.removeDevice(s.endpoint);
    this.mediator.remove(uuid);
    this.served.delete(uuid);
    return { ok: true, released };
  }

  private entry(uuid: unknown): Served {
    const s = this.served.get(checkUuid(uuid));
    if (!s) throw new ManagerError("ENOENT", `vGPU ${String(uuid)} is not running`);
    return s;
  }

  private listing(withStats: boolean): Reply {
    const defined = new Set(this.definitions.load().definitions.map((d) => d.uuid));
    const total = this.mediator.scheduler.totalBusyMs;
    return {
      vgpus: [...this.served.values()].map((served) => {
        const { vgpu, endpoint, socket } = served;
        return {
          uuid: vgpu.uuid,
          type: vgpu.type.name,
          socket,
          defined: defined.has(vgpu.uuid),
          state: this.stateOf(served),
          error: vgpu.error,
          share: total > 0 ? vgpu.stats.busyMs / total : 0,
          display: { width: vgpu.display.width, height: vgpu.display.height, enabled: vgpu.display.enabled },
          ...(withStats
            ? {
                stats: vgpu.stats,
                // Guest pages fetched by DMA_READ (memory served by messages), and bytes written back.
                explicitFrameMaps: vgpu.mpt instanceof VfioUserMpt ? vgpu.mpt.maps : 0,
                dmaBytesWrittenBack: vgpu.mpt instanceof VfioUserMpt ? vgpu.mpt.writtenBack : 0,
                regionReads: Array.from(endpoint.stats.regionReads.subarray(0, 9)),
                regionWrites: Array.from(endpoint.stats.regionWrites.subarray(0, 9)),
              }
            : {}),
        };
      }),
    };
  }

  /** One management request → its reply. Throws MgpuError with a stable code on failure. */
  async handle(req: Request): Promise<Reply> {
    checkRequest(req);
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
          ...this.listing(true),
          engine: this.mediator.gpu.engine.stats,
          bandBytes: this.mediator.gpu.engine.bandBytes,
          scheduler: this.mediator.scheduler.stats,
        };
      case "create":
        return this.start(String(req.type), typeof req.uuid === "string" ? req.uuid : undefined);
      case "start": {
        const { definition, broken } = this.definitions.lookup(String(req.uuid));
        if (broken)
          throw new ManagerError("EBROKEN", `vGPU ${String(req.uuid)}: broken definition: ${broken.reason}`);
        if (!definition) throw new ManagerError("ENOENT", `vGPU ${String(req.uuid)} is not defined`);
        return this.start(definition.type, definition.uuid);
      }
      case "remove":
      case "stop":
        return this.stopVgpu(String(req.uuid), req.force === true);
      case "qemu-args": {
        const s = this.entry(req.uuid);
        return { socket: s.socket, qemu: qemuArgs(s.socket) };
      }
      case "screenshot": {
        // The PNG goes back to the client, which writes it: the daemon writes no file a client names.
        const s = this.entry(req.uuid);
        const frame = s.vgpu.scanout();
        if (frame.width === 0 || frame.height === 0)
          throw new ManagerError(
            "ENODISPLAY",
            `vGPU ${s.vgpu.uuid} has no display mode set (its guest has not enabled the display)`,
          );
        return { width: frame.width, height: frame.height, png: s.vgpu.screenshotPng().toString("base64") };
      }
      case "checksum":
        return { sha256: createHash("sha256").update(this.entry(req.uuid).vgpu.localMemory).digest("hex") };
      case "quit":
        this.stop("quit requested");
        return { ok: true };
    }
    throw new ManagerError("EINVAL", `unknown command ${req.cmd}`);
  }

  /**
   * Stops accepting, asks attached VMMs to release (REQ), closes every
   * connection, removes the sockets and releases the lock. Definitions need no
   * flush: every change was written atomically when it was made.
   */
  private async shutdown(): Promise<void> {
    sdNotify("STOPPING=1", this.log);
    this.log.info({ reason: this.stopReason }, "shutting down");
    await this.control?.closeGracefully();
    this.control = undefined;
    for (const s of this.served.values()) if (s.endpoint.ownerAttached) s.vgpu.pci.irqs.requestRelease();
    this.closeAll();
  }

  private closeAll(): void {
    this.definitions?.unwatch();
    this.closeStdio?.();
    this.closeStdio = undefined;
    this.control?.close();
    this.control = undefined;
    for (const s of [...this.served.values()]) {
      try {
        this.server?.removeDevice(s.endpoint);
        this.mediator.remove(s.vgpu.uuid);
      } catch (e) {
        this.log.warn({ uuid: s.vgpu.uuid, err: String(e) }, "while removing a vGPU at shutdown");
      }
    }
    this.served.clear();
    this.server?.shutdown();
    this.lock.release();
  }
}
