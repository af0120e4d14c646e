/**
 * VFIO migration v2: the device state machine (a Mealy machine: work happens on
 * the arcs), multi-arc transitions by shortest path with saving states only at
 * the ends, and the migration data stream carried by MIG_DATA_READ/WRITE.
 */
import {
  Errno,
  MIGRATION_P2P,
  MIGRATION_PRE_COPY,
  MIGRATION_STOP_COPY,
  MigState,
  VfioUserError,
} from "../vfio-user/index.js";

/** What a device does on the arcs. Save returns the whole device state; load applies it. */
export interface MigrationHooks {
  /** Serialize the device's complete state (STOP_COPY). */
  save(): Uint8Array;
  /** Restore from what save() produced (RESUMING → STOP); throw on bad data. */
  load(state: Uint8Array): void;
  /** Initial data offered while still running (PRE_COPY); optional. */
  savePrecopy?(): Uint8Array;
  /** The device must stop changing its state and guest memory (entering STOP / RUNNING_P2P). */
  stop?(): void;
  /** The device may run again (entering RUNNING). */
  resume?(): void;
}

export interface MigrationSupport {
  readonly preCopy?: boolean;
  readonly p2p?: boolean;
}

type State = (typeof MigState)[keyof typeof MigState];
const SAVING: ReadonlySet<number> = new Set([MigState.STOP_COPY, MigState.PRE_COPY, MigState.PRE_COPY_P2P]);

const stateNames: Record<number, string> = Object.fromEntries(
  Object.entries(MigState).map(([k, v]) => [v, k]),
);
export function migStateName(s: number): string {
  return stateNames[s] ?? `state ${s}`;
}

export class Migration {
  private current: State = MigState.RUNNING;
  private readonly arcs: Map<number, number[]>;
  private outgoing: Uint8Array = new Uint8Array(0);
  private incoming: Uint8Array[] = [];
  /** Arcs taken, for tests and logs. */
  readonly history: string[] = [];

  constructor(
    private readonly hooks: MigrationHooks,
    readonly support: MigrationSupport = {},
  ) {
    const pre = support.preCopy === true;
    const p2p = support.p2p === true;
    const S = MigState;
    const arcs: [number, number][] = [
      [S.STOP, S.STOP_COPY],
      [S.STOP_COPY, S.STOP],
      [S.STOP, S.RESUMING],
      [S.RESUMING, S.STOP],
    ];
    if (p2p)
      arcs.push(
        [S.RUNNING, S.RUNNING_P2P],
        [S.RUNNING_P2P, S.RUNNING],
        [S.RUNNING_P2P, S.STOP],
        [S.STOP, S.RUNNING_P2P],
      );
    else arcs.push([S.RUNNING, S.STOP], [S.STOP, S.RUNNING]);
    if (pre) {
      arcs.push([S.RUNNING, S.PRE_COPY], [S.PRE_COPY, S.RUNNING], [S.PRE_COPY, S.STOP_COPY]);
      if (p2p)
        arcs.push(
          [S.PRE_COPY, S.PRE_COPY_P2P],
          [S.PRE_COPY_P2P, S.PRE_COPY],
          [S.PRE_COPY_P2P, S.STOP_COPY],
          [S.RUNNING_P2P, S.PRE_COPY_P2P],
          [S.PRE_COPY_P2P, S.RUNNING_P2P],
        );
    }
    this.arcs = new Map();
    for (const [from, to] of arcs) this.arcs.set(from, [...(this.arcs.get(from) ?? []), to]);
  }

  /** VFIO_DEVICE_FEATURE_MIGRATION flags. */
  get flags(): number {
    return (
      MIGRATION_STOP_COPY |
      (this.support.p2p ? MIGRATION_P2P : 0) |
      (this.support.preCopy ? MIGRATION_PRE_COPY : 0)
    );
  }

  get state(): number {
    return this.current;
  }

  /** True while the device may change state and guest memory. */
  get running(): boolean {
    return this.current === MigState.RUNNING || this.current === MigState.PRE_COPY;
  }

  /** Moves to `target` along the shortest legal path, doing each arc's work. */
  set(target: number): void {
    if (this.current === MigState.ERROR)
      throw new VfioUserError(Errno.EINVAL, "device in ERROR state: reset it");
    if (target === this.current) return;
    if (!this.arcs.has(target) && ![...this.arcs.values()].some((to) => to.includes(target)))
      throw new VfioUserError(Errno.EINVAL, `${migStateName(target)} is not supported`);
    if (
      (this.current === MigState.STOP_COPY || this.current === MigState.RESUMING) &&
      SAVING.has(target) &&
      target !== MigState.STOP_COPY
    )
      throw new VfioUserError(
        Errno.EINVAL,
        `${migStateName(this.current)} -> ${migStateName(target)} is not allowed`,
      );
    const path = this.path(this.current, target);
    if (!path)
      throw new VfioUserError(
        Errno.EINVAL,
        `no path ${migStateName(this.current)} -> ${migStateName(target)}`,
      );
    for (const next of path) this.arc(next as State);
  }

  /** DEVICE_RESET returns the machine to RUNNING, from anywhere, ERROR included. */
  reset(): void {
    this.current = MigState.RUNNING;
    this.outgoing = new Uint8Array(0);
    this.incoming = [];
  }

  /** MIG_DATA_READ: up to `size` bytes; fewer means the stream has ended (for now). */
  read(size: number): Uint8Array {
    if (!SAVING.has(this.current))
      throw new VfioUserError(Errno.EINVAL, `no migration data in ${migStateName(this.current)}`);
    const chunk = this.outgoing.subarray(0, size);
    this.outgoing = this.outgoing.subarray(chunk.length);
    return chunk;
  }

  /** MIG_DATA_WRITE: appends to the incoming stream. */
  write(data: Uint8Array): void {
    if (this.current !== MigState.RESUMING)
      throw new VfioUserError(Errno.EINVAL, `not RESUMING (${migStateName(this.current)})`);
    this.incoming.push(data.slice());
  }

  private path(from: number, to: number): number[] | undefined {
    // Breadth-first: shortest path; saving states may only start or end it.
    const previous = new Map<number, number>([[from, -1]]);
    const queue = [from];
    while (queue.length > 0) {
      const s = queue.shift()!;
      if (s === to) break;
      if (s !== from && SAVING.has(s)) continue;
      for (const n of this.arcs.get(s) ?? []) {
        if (previous.has(n)) continue;
        previous.set(n, s);
        queue.push(n);
      }
    }
    if (!previous.has(to)) return undefined;
    const path: number[] = [];
    for (let s = to; s !== from; s = previous.get(s)!) path.unshift(s);
    return path;
  }

  private arc(next: State): void {
    const from = this.current;
    const S = MigState;
    try {
      if (from === S.RESUMING && next === S.STOP) {
        const total = this.incoming.reduce((n, c) => n + c.length, 0);
        const all = new Uint8Array(total);
        let at = 0;
        for (const c of this.incoming) {
          all.set(c, at);
          at += c.length;
        }
        this.incoming = [];
        this.hooks.load(all);
      }
      if (next === S.RESUMING) this.incoming = [];
      if (next === S.PRE_COPY) this.outgoing = this.hooks.savePrecopy?.() ?? new Uint8Array(0);
      if (
        (next === S.STOP || next === S.RUNNING_P2P) &&
        (from === S.RUNNING || from === S.PRE_COPY || from === S.RUNNING_P2P)
      )
        this.hooks.stop?.();
      if (next === S.STOP_COPY) {
        this.hooks.stop?.();
        const rest = this.hooks.save();
        const joined = new Uint8Array(this.outgoing.length + rest.length);
        joined.set(this.outgoing);
        joined.set(rest, this.outgoing.length);
        this.outgoing = joined;
      }
      if (from === S.STOP_COPY || from === S.PRE_COPY) {
        if (next !== S.STOP_COPY && next !== S.PRE_COPY_P2P && next !== S.PRE_COPY)
          this.outgoing = new Uint8Array(0);
      }
      if (next === S.RUNNING) this.hooks.resume?.();
    } catch (e) {
      this.current = S.ERROR;
      this.history.push(`${migStateName(from)} -> ERROR`);
      throw e instanceof VfioUserError
        ? e
        : new VfioUserError(Errno.EIO, `migration arc failed: ${String(e)}`);
    }
    this.history.push(`${migStateName(from)} -> ${migStateName(next)}`);
    this.current = next;
  }
}
