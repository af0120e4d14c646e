/** One device served on one listening socket, the counters kept for it, and who holds it. */
import type { DeviceSession, VfioDevice } from "./device.js";

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
  /** Connections refused: per-device or server-wide limit, or no fd left to accept with. */
  connectionsRefused = 0;
  /** Connections closed for not finishing VERSION in time. */
  negotiationTimeouts = 0;
  /** Requests of a read-only observer refused with EBUSY. */
  observerRefusals = 0;
}

/**
 * One device served on one listening socket (a server can hold several).
 *
 * Session policy: the first client to finish VERSION while no other holds the
 * device becomes its owner (the VMM): the device is attached to it and it may
 * do everything. Any client that negotiates while an owner is attached is a
 * read-only observer for the rest of its connection (see dispatch.ts).
 */
export class Endpoint {
  readonly stats = new ServerStats();
  /** The owning VMM's session, while one is attached. */
  owner: DeviceSession | undefined;
  /** Connections open on this endpoint (owner, observers, and ones still negotiating). */
  connections = 0;
  /** Connections that negotiated as observers and are still open. */
  observers = 0;
  /**
   * Set by the server: closes the owner's session when its peer has hung up
   * but the loop has not reaped it yet (a VMM that reconnects at once must
   * find the device free, not be made an observer of its own dead session).
   */
  reapOwnerIfGone: () => void = () => {};

  constructor(
    readonly device: VfioDevice,
    public listenFd: number,
    public path: string | undefined,
  ) {}

  /** True while a VMM owns the device (for `mgpu list`: attached vs idle). */
  get ownerAttached(): boolean {
    return this.owner !== undefined;
  }
}
