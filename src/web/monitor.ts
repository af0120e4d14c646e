/**
 * The worker's view of the daemon's state: one snapshot at a time (concurrent
 * callers share it), at least once a second while the web server runs so the
 * scheduler's tick log is drained into the histogram before it wraps.
 */
import type { DaemonLink } from "./link.js";
import type { DaemonMetrics } from "./metrics.js";
import type { DaemonSnapshot } from "./protocol.js";

export class Monitor {
  private pending: Promise<DaemonSnapshot> | undefined;
  private readonly listeners: ((s: DaemonSnapshot) => void)[] = [];
  latest: DaemonSnapshot | undefined;

  constructor(
    private readonly link: DaemonLink,
    private readonly metrics: DaemonMetrics,
    periodMs = 1000,
  ) {
    setInterval(() => void this.refresh().catch(() => {}), periodMs).unref();
  }

  /** Calls `fn` with every new snapshot. */
  onSnapshot(fn: (s: DaemonSnapshot) => void): void {
    this.listeners.push(fn);
  }

  refresh(): Promise<DaemonSnapshot> {
    this.pending ??= this.link
      .snapshot()
      .then((s) => {
        this.metrics.update(s);
        this.latest = s;
        for (const fn of this.listeners) fn(s);
        return s;
      })
      .finally(() => (this.pending = undefined));
    return this.pending;
  }
}
