/**
 * sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, so a
 * `Type=notify` unit knows when the sockets are bound (READY=1) and when the
 * daemon is on its way out (STOPPING=1). Outside systemd it does nothing.
 */
import { sendDatagram } from "../sys/index.js";
import type { Logger } from "../base/index.js";

export function sdNotify(state: string, log?: Logger, env: NodeJS.ProcessEnv = process.env): boolean {
  const socket = env.NOTIFY_SOCKET;
  if (!socket) return false;
  try {
    sendDatagram(socket, Buffer.from(state));
    return true;
  } catch (e) {
    log?.warn({ socket, err: String(e) }, "sd_notify failed");
    return false;
  }
}
