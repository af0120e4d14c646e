/**
 * One vGPU as a vfio-user backend program, the spec's conventions: no
 * daemonizing, SIGTERM honoured, `--socket-path=PATH` or `--fd=N` (a listening
 * socket its parent made), described by packaging/vfio-user/mediated-gpu.json.
 * No state directory, no control socket: a VMM manager that spawns backends
 * owns their life cycle.
 */
import { VfioUserMpt } from "../hypervisor/vfio-user.js";
import { Mediator, type Vgpu } from "../mediator/index.js";
import { type Logger, defaultLogger } from "../base/index.js";
import { Server } from "../vfio-user/server.js";
import { serveRounds } from "./loop.js";
import { sdNotify } from "./notify.js";
import { type SocketAccess, bindPrivate, claimSocketPath } from "./sockets.js";
import { checkType, checkUuid } from "./validate.js";

export interface BackendOptions {
  /** Exactly one of socketPath and fd. */
  readonly socketPath?: string;
  readonly fd?: number;
  readonly type: string;
  readonly uuid?: string;
  readonly watchdogMs?: number;
  readonly access?: SocketAccess;
  readonly logger?: Logger;
}

export class VgpuBackend {
  readonly mediator: Mediator;
  readonly vgpu: Vgpu;
  readonly server: Server;

  constructor(readonly options: BackendOptions) {
    const log = options.logger ?? defaultLogger("warn");
    this.mediator = new Mediator({
      mpt: (device, hooks) => new VfioUserMpt(device, hooks),
      logger: log,
      ...(options.watchdogMs ? { scheduler: { timeBudgetMs: options.watchdogMs } } : {}),
    });
    this.vgpu = this.mediator.create(
      checkType(options.type),
      options.uuid === undefined ? undefined : checkUuid(options.uuid),
    );
    this.server = new Server(this.vgpu.pci, {
      logger: log,
      afterRound: () => this.mediator.scheduler.tick(),
      timeoutMs: 30_000,
    });
    const path = options.socketPath;
    if (path !== undefined) {
      claimSocketPath(path);
      bindPrivate(path, options.access ?? {}, () => this.server.listen(path));
    } else {
      this.server.listenOn(options.fd!);
    }
  }

  async run(): Promise<void> {
    sdNotify("READY=1");
    await serveRounds(this.server);
    sdNotify("STOPPING=1");
    if (this.vgpu.pci.session !== undefined) this.vgpu.pci.irqs.requestRelease();
    this.server.shutdown(); // closes the connection and removes the socket file
    this.mediator.remove(this.vgpu.uuid);
  }

  stop(): void {
    this.server.stop();
  }
}
