/**
 * Drives a vfio-user Server from an async function: rounds back to back for
 * up to a slice, then one turn of Node's event loop, where signal handlers,
 * the control channel and timers run. Traps are still served straight from
 * poll on this thread (no hop per message); a turn costs one setImmediate per
 * slice, and a signal waits at most one slice (poll returns on EINTR).
 */
import type { Server } from "../vfio-user/server.js";

/** Longest stretch of vfio-user rounds between two turns of the event loop. */
export const EVENT_LOOP_SLICE_MS = 25;

/**
 * `wantsTurn` is asked after every round: true ends the slice early (the
 * control channel saw input that Node's event loop must read).
 */
export async function serveRounds(
  server: Server,
  wantsTurn: () => boolean = () => false,
  sliceMs = EVENT_LOOP_SLICE_MS,
): Promise<void> {
  const idle = server.idleTimeoutMs;
  let busy = false;
  while (!server.stopped) {
    const until = performance.now() + sliceMs;
    for (;;) {
      const left = Math.ceil(until - performance.now());
      if (left <= 0 || server.stopped || wantsTurn()) break;
      busy = server.round(busy ? 0 : idle < 0 ? left : Math.min(left, idle));
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
