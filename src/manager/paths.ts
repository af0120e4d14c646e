/**
 * Where the daemon keeps things. The state directory (definitions, the lock,
 * the control socket, vGPU sockets by default) follows the XDG base directory
 * spec (`$XDG_STATE_HOME/mediated-gpu`, ~/.local/state/mediated-gpu), unless
 * `--state-dir` or `MGPU_STATE_DIR` says otherwise; under systemd the unit
 * passes /var/lib/mediated-gpu.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { xdgState } from "xdg-basedir";
import type { Logger } from "../base/index.js";
import { ManagerError } from "./errors.js";

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MGPU_STATE_DIR) return env.MGPU_STATE_DIR;
  // xdg-basedir reads XDG_STATE_HOME at import; a caller's env (tests) is honoured here too.
  const base =
    env.XDG_STATE_HOME || (env === process.env ? xdgState : undefined) || join(homedir(), ".local", "state");
  return join(base, "mediated-gpu");
}

/**
 * Creates a directory only its owner can enter (0700, whatever the umask).
 * An existing directory is used as it is; if others can enter it, say so once.
 */
export function ensurePrivateDir(dir: string, log?: Logger): void {
  let created: string | undefined;
  try {
    created = mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new ManagerError("EPERM", `cannot create ${dir}: ${(e as Error).message}`, { cause: e });
  }
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new ManagerError("EPERM", `${dir} is not a directory`);
  if (created !== undefined) {
    // mkdir's mode is masked by the umask, and recursive parents too: set the leaf exactly.
    chmodSync(dir, 0o700);
  } else if (st.mode & 0o077 && st.uid === process.getuid?.()) {
    log?.warn({ dir, mode: (st.mode & 0o777).toString(8) }, "state directory is open to other users");
  }
}

/**
 * With a configured socket group: the directories that hold sockets become
 * enterable (not listable) by that group, 0710, so its members reach the 0660
 * sockets and nothing else.
 */
export function openDirToGroup(dir: string, gid: number): void {
  chownSync(dir, -1, gid);
  chmodSync(dir, 0o710);
}
