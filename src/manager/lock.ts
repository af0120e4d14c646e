/**
 * One daemon per state directory: an exclusive flock(2) on `<state>/daemon.lock`,
 * held for the daemon's life. The kernel drops it when the process dies, even by
 * SIGKILL, so a crash never leaves the directory locked; the file keeps the
 * holder's pid for the message a second daemon prints.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { tryLockExclusive } from "../sys/index.js";
import { ManagerError } from "./errors.js";

export class StateLock {
  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  static acquire(stateDir: string): StateLock {
    const path = join(stateDir, "daemon.lock");
    const fd = openSync(path, "a+", 0o600);
    if (!tryLockExclusive(fd)) {
      closeSync(fd);
      let holder = "";
      try {
        holder = readFileSync(path, "utf8").trim();
      } catch {
        /* unreadable: say less */
      }
      throw new ManagerError(
        "ELOCKED",
        `another mgpu daemon${/^\d+$/.test(holder) ? ` (pid ${holder})` : ""} is serving ${stateDir}; ` +
          `stop it first (mgpu quit) or use another --state-dir`,
      );
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
    return new StateLock(path, fd);
  }

  release(): void {
    if (this.fd < 0) return;
    ftruncateSync(this.fd, 0);
    closeSync(this.fd);
    this.fd = -1;
  }
}
