/**
 * Socket files the daemon owns: claimed before binding (a stale socket left by
 * a killed daemon is replaced; a live server, or anything that is not a
 * socket, is refused and left alone) and created with an explicit mode,
 * whatever the umask (0600, or 0660 for a configured group).
 */
import { chmodSync, chownSync, lstatSync, rmSync } from "node:fs";
import { SysError, closeFd, connectUnix } from "../sys/index.js";
import { ManagerError } from "./errors.js";

export interface SocketAccess {
  /** A group that may connect too (sockets become 0660 and owned by it). */
  readonly gid?: number;
}

/** Makes `path` free for bind(): ENOENT is fine, a dead socket is removed, anything else refused. */
export function claimSocketPath(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  if (!st.isSocket()) throw new ManagerError("EEXIST", `${path} exists and is not a socket; not touching it`);
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch (e) {
    if (e instanceof SysError && (e.code === "ECONNREFUSED" || e.code === "ENOENT")) {
      rmSync(path, { force: true }); // its server is gone
      return;
    }
    throw new ManagerError("EADDRINUSE", `${path}: cannot tell whether a server owns it (${String(e)})`, {
      cause: e,
    });
  }
  closeFd(fd);
  throw new ManagerError("EADDRINUSE", `${path} is in use: another server answers on it`);
}

/**
 * Runs `bind` (which creates the socket file) under umask 0177, so the file
 * is never wider than 0600 even for a moment, then sets its final mode.
 */
export function bindPrivate<T>(path: string, access: SocketAccess, bind: () => T): T {
  const old = process.umask(0o177);
  let result: T;
  try {
    result = bind();
  } finally {
    process.umask(old);
  }
  if (access.gid !== undefined) {
    chownSync(path, -1, access.gid);
    chmodSync(path, 0o660);
  } else {
    chmodSync(path, 0o600);
  }
  return result;
}
