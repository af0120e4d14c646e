import pino from "pino";

/** The logging surface the protocol layer needs; a pino logger satisfies it. */
export interface Logger {
  error(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  info(fields: object, message: string): void;
  debug(fields: object, message: string): void;
}

/** Synchronous JSON lines on stderr: safe in worker threads and across a crash. */
export function defaultLogger(level: string = process.env.MGPU_LOG_LEVEL ?? "info"): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

/**
 * Lets through at most `burst` lines per `intervalMs`, then counts the rest and
 * reports how many were suppressed. Hostile peers can send thousands of bad
 * messages a second; the log must stay readable.
 */
export class RateLimitedLog {
  private windowStart = 0;
  private emitted = 0;
  private suppressed = 0;

  constructor(
    private readonly log: Logger,
    private readonly burst = 20,
    private readonly intervalMs = 1000,
  ) {}

  warn(fields: object, message: string): void {
    const now = Date.now();
    if (now - this.windowStart >= this.intervalMs) {
      if (this.suppressed > 0) this.log.warn({ suppressed: this.suppressed }, "similar warnings suppressed");
      this.windowStart = now;
      this.emitted = 0;
      this.suppressed = 0;
    }
    if (this.emitted < this.burst) {
      this.emitted++;
      this.log.warn(fields, message);
    } else {
      this.suppressed++;
    }
  }
}

/** Discards everything: for tests and one-shot tools that report by other means. */
export const quietLogger: Logger = { error() {}, warn() {}, info() {}, debug() {} };
