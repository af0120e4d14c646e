/** One device served on one listening socket, and the counters kept for it. */
import type { VfioDevice } from "./device.js";

/** Counters kept on the trap path (no allocation per message). */
export class ServerStats {
  readonly commands = new Float64Array(32);
  readonly regionReads = new Float64Array(16);
  readonly regionWrites = new Float64Array(16);
  errorReplies = 0;
  /** Error replies by errno value (values past 255 share the last slot). */
  readonly errorsByErrno = new Float64Array(256);
  connectionsAccepted = 0;
  connectionsClosedOnError = 0;
}

/** One device served on one listening socket (a server can hold several). */
export class Endpoint {
  readonly stats = new ServerStats();
  constructor(
    readonly device: VfioDevice,
    public listenFd: number,
    public path: string | undefined,
  ) {}
}
