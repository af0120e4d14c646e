/**
 * The web layer's door into the daemon.
 *
 * Why a worker thread: the daemon serves every vGPU from one synchronous loop
 * (Server.run: poll → handler → reply, no event-loop hop on the trap path), so
 * Node's event loop on that thread never runs while it serves. Rather than
 * chopping that loop into event-loop turns (every trap would then wait behind
 * HTTP parsing, PNG and frame encoding), HTTP, WebSocket frames and VNC run in
 * one worker thread with its own event loop. The worker asks the daemon's
 * thread for what only it may touch through a MessagePort, and signals an
 * eventfd that the daemon's poll watches; the daemon's thread drains the port
 * synchronously (receiveMessageOnPort) between polls, like a control-socket
 * request, and answers. Pixels need no round trip: the worker maps the parent's
 * local memory (a memfd) read-only and scans displays out of its own mapping,
 * so the daemon's thread only hands over register values.
 */
import { MessageChannel, type MessagePort, Worker, receiveMessageOnPort } from "node:worker_threads";
import { MgpuError } from "../base/index.js";
import type { Daemon } from "../manager/daemon.js";
import type { Reply } from "../manager/control.js";
import { EventFd, errnoName } from "../sys/index.js";
import type {
  BridgeMessage,
  BridgeRequest,
  DaemonSnapshot,
  DisplayState,
  VgpuSnapshot,
  WorkerInput,
  WorkerReady,
} from "./protocol.js";

export class WebError extends MgpuError {}

export interface WebOptions {
  /** HTTP address (default host 127.0.0.1: the API has no authentication). */
  readonly host?: string;
  readonly port: number;
  /** VNC consoles: one TCP port per vGPU, counting up from this one (0: any free port). */
  readonly vnc?: { readonly host?: string; readonly port: number };
  /** CPU the live frames may use, in ms per second (default 80: 8% of one core, under the 10% target). */
  readonly frameBudgetMs?: number;
  readonly logLevel?: string;
}

/** Parses `PORT` or `HOST:PORT` (host defaults to loopback). */
export function parseAddress(value: string, what: string): { host: string; port: number } {
  const m = /^(?:(.+):)?(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new WebError("EINVAL", `${what} must be PORT or HOST:PORT, not ${value}`);
  const host = (m[1] ?? "127.0.0.1").replace(/^\[(.*)\]$/, "$1");
  return { host, port };
}

export class WebServer {
  private constructor(
    private readonly daemon: Daemon,
    private readonly wake: EventFd,
    private readonly worker: Worker,
    private readonly port: MessagePort,
    readonly url: string,
  ) {}

  /** Starts the worker and waits (up to 15 s) until it listens; throws if it cannot. */
  static start(daemon: Daemon, options: WebOptions): WebServer {
    const { port1, port2 } = new MessageChannel();
    const status = new SharedArrayBuffer(4);
    const wake = new EventFd(undefined, { nonBlocking: true });
    const memory = daemon.mediator.gpu.localMemory;
    const input: WorkerInput = {
      host: options.host ?? "127.0.0.1",
      port: options.port,
      ...(options.vnc ? { vnc: { host: options.vnc.host ?? "127.0.0.1", port: options.vnc.port } } : {}),
      localMemory: { size: memory.size },
      wakeFd: wake.fd,
      frameBudgetMs: options.frameBudgetMs ?? 80,
      logLevel: options.logLevel ?? process.env.MGPU_LOG_LEVEL ?? "warn",
      status,
    };
    const worker = new Worker(new URL("./worker.js", import.meta.url), {
      workerData: { input, port: port2 },
      transferList: [port2],
    });
    const flag = new Int32Array(status);
    Atomics.wait(flag, 0, 0, 15_000);
    const first = receiveMessageOnPort(port1)?.message as WorkerReady | undefined;
    if (!first || !first.ready) {
      void worker.terminate();
      wake.close();
      throw new WebError(
        first?.ready === false ? first.code : "ETIMEDOUT",
        `the web server did not start: ${first?.ready === false ? first.error : "no answer in 15 s"}`,
      );
    }
    worker.unref();
    const web = new WebServer(daemon, wake, worker, port1, first.url);
    daemon.server.watch(wake.fd, () => web.drain());
    return web;
  }

  /** Answers every request the worker has queued (runs on the daemon's thread, between polls). */
  private drain(): void {
    this.wake.read();
    for (let m = receiveMessageOnPort(this.port); m; m = receiveMessageOnPort(this.port)) {
      const { id, body } = m.message as BridgeMessage;
      // Daemon.handle is async (a forced remove waits for the VMM): post the reply when it is there.
      const failed = (e: unknown): Reply => ({
        error: e instanceof Error ? e.message : String(e),
        code: (e as { code?: string }).code ?? "EIO",
      });
      let pending: Promise<Reply>;
      try {
        pending = Promise.resolve(answer(this.daemon, body));
      } catch (e) {
        pending = Promise.resolve(failed(e));
      }
      void pending.then(
        (reply) => this.port.postMessage({ id, reply }),
        (e: unknown) => this.port.postMessage({ id, reply: failed(e) }),
      );
    }
  }

  async close(): Promise<void> {
    this.daemon.server.unwatch(this.wake.fd);
    await this.worker.terminate();
    this.port.close();
    this.wake.close();
  }
}

function answer(daemon: Daemon, body: BridgeRequest): Reply | Promise<Reply> {
  switch (body.op) {
    case "handle":
      if (body.request.cmd === "quit" || body.request.cmd === "screenshot")
        throw new WebError("EINVAL", `${body.request.cmd} is not offered over HTTP`);
      return daemon.handle(body.request);
    case "snapshot":
      return { snapshot: snapshot(daemon) };
    case "displays":
      return { displays: [...daemon.served.values()].map(({ vgpu }) => displayState(vgpu)) };
    case "definitions": {
      const { definitions, broken } = daemon.definitions.load();
      return { definitions, broken };
    }
    case "define":
      daemon.definitions.define(body.definition);
      return { uuid: body.definition.uuid };
    case "modify":
      return { definition: daemon.definitions.modify(body.uuid, body.change) };
    case "undefine":
      daemon.definitions.undefine(body.uuid);
      return { ok: true };
  }
}

type Served = Daemon["served"] extends Map<string, infer S> ? S : never;

function displayState(vgpu: Served["vgpu"]): DisplayState {
  return {
    uuid: vgpu.uuid,
    lmBase: vgpu.lmBase,
    lmSize: vgpu.type.localMemory,
    fd: vgpu.gpu.localMemory.sliceAt(vgpu.lmBase).fd,
    maxWidth: vgpu.type.maxWidth,
    maxHeight: vgpu.type.maxHeight,
    dispi: Array.from(vgpu.display.regs),
    bigEndian: vgpu.display.bigEndian,
  };
}

function snapshot(daemon: Daemon): DaemonSnapshot {
  const scheduler = daemon.mediator.scheduler;
  const dropped = scheduler.tickSeconds.dropped;
  scheduler.tickSeconds.dropped = 0;
  const vgpus = [...daemon.served.values()].map(({ vgpu, endpoint, socket }): VgpuSnapshot => {
    const errors: Record<string, number> = {};
    endpoint.stats.errorsByErrno.forEach((n, errno) => {
      if (n > 0) errors[errnoName(errno)] = n;
    });
    return {
      uuid: vgpu.uuid,
      type: vgpu.type.name,
      weight: vgpu.type.weight,
      socket,
      display: displayState(vgpu),
      stats: { ...vgpu.stats },
      error: vgpu.error,
      regionReads: Array.from(endpoint.stats.regionReads.subarray(0, 9)),
      regionWrites: Array.from(endpoint.stats.regionWrites.subarray(0, 9)),
      dmaBytesRead: vgpu.pci.dma.bytesRead,
      dmaBytesWritten: vgpu.pci.dma.bytesWritten,
      errors,
      connectionsAccepted: endpoint.stats.connectionsAccepted,
      connectionsClosedOnError: endpoint.stats.connectionsClosedOnError,
    };
  });
  return {
    vgpus,
    connections: daemon.server.connectionCount,
    totalBusyMs: scheduler.totalBusyMs,
    tickSeconds: scheduler.tickSeconds.drain(),
    ticksDropped: dropped,
  };
}
