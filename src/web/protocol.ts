/**
 * What the web worker and the daemon's thread say to each other (see bridge.ts):
 * requests with an id, answered with the same id; the daemon's state as plain
 * data (structured-clone friendly) for metrics, frames and the dashboard.
 */
import type { Reply, Request } from "../manager/control.js";
import type { Definition } from "../manager/definitions.js";
import type { VgpuStats } from "../mediator/index.js";

/** Where a vGPU's display is and how it is set up: enough to scan it out from a mapping of local memory. */
export interface DisplayState {
  readonly uuid: string;
  /** Offset of the vGPU's slice in the parent's local memory, and its size. */
  readonly lmBase: number;
  readonly lmSize: number;
  /** The slice's own memfd (each vGPU's memory is a separate object), which the web thread maps at lmBase. */
  readonly fd?: number;
  readonly maxWidth: number;
  readonly maxHeight: number;
  /** The DISPI registers as the guest set them. */
  readonly dispi: readonly number[];
  readonly bigEndian: boolean;
}

export interface VgpuSnapshot {
  readonly uuid: string;
  readonly type: string;
  readonly weight: number;
  readonly socket: string;
  readonly display: DisplayState;
  readonly stats: VgpuStats;
  readonly error: number;
  /** vfio-user REGION_READ/WRITE messages by region index (config space is 7, BAR2 is 2). */
  readonly regionReads: readonly number[];
  readonly regionWrites: readonly number[];
  readonly dmaBytesRead: number;
  readonly dmaBytesWritten: number;
  /** Error replies by errno name. */
  readonly errors: Readonly<Record<string, number>>;
  readonly connectionsAccepted: number;
  readonly connectionsClosedOnError: number;
}

export interface DaemonSnapshot {
  readonly vgpus: readonly VgpuSnapshot[];
  readonly connections: number;
  readonly totalBusyMs: number;
  /** Scheduler tick lengths (s) since the last snapshot, and how many were lost before it. */
  readonly tickSeconds: readonly number[];
  readonly ticksDropped: number;
}

/** Worker → daemon thread. */
export type BridgeRequest =
  | { readonly op: "handle"; readonly request: Request }
  | { readonly op: "snapshot" }
  | { readonly op: "displays" }
  | { readonly op: "definitions" }
  | { readonly op: "define"; readonly definition: Definition }
  | { readonly op: "modify"; readonly uuid: string; readonly change: Partial<Omit<Definition, "uuid">> }
  | { readonly op: "undefine"; readonly uuid: string };

export interface BridgeMessage {
  readonly id: number;
  readonly body: BridgeRequest;
}

/** Daemon thread → worker: a Reply, or {error, code} as on the control socket. */
export interface BridgeAnswer {
  readonly id: number;
  readonly reply: Reply;
}

/** What the worker is started with. */
export interface WorkerInput {
  readonly host: string;
  readonly port: number;
  /** VNC consoles: one port per vGPU from `vncPort` up (0: any free port each). Absent: no VNC. */
  readonly vnc?: { readonly host: string; readonly port: number };
  /** The parent's local memory (a memfd of this process), mapped read-only by the worker. */
  /** Size of the parent's local memory; each vGPU's slice comes with its display state (`fd`). */
  readonly localMemory: { readonly size: number };
  /** Signalled (eventfd) after each request, so the daemon's poll wakes and reads the port. */
  readonly wakeFd: number;
  /** CPU the live frames may use, in ms per second. */
  readonly frameBudgetMs: number;
  readonly logLevel: string;
  /** Int32Array: 0 starting, 1 listening, 2 failed (the daemon thread waits on it). */
  readonly status: SharedArrayBuffer;
}

/** The worker's first message: where it listens, or why it could not. */
export type WorkerReady =
  | { readonly ready: true; readonly url: string }
  | { readonly ready: false; readonly error: string; readonly code: string };
