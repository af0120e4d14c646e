import { fstatSync } from "node:fs";
import { EAGAIN, EINTR } from "./errno-values.js";
import { F_GETFL, F_SETFL, LOCK_EX, LOCK_NB, O_NONBLOCK, check, errno, libc } from "./libc.js";
import { SysError } from "./errors.js";

/** Closes a file descriptor; EINTR still means closed on Linux, so it is not retried. */
export function closeFd(fd: number): void {
  if (libc.close(fd) < 0) {
    const e = errno();
    if (e !== EINTR) throw new SysError("close", e);
  }
}

/** Duplicates a file descriptor (the copy is close-on-exec). */
export function dupFd(fd: number): number {
  return check("fcntl(F_DUPFD_CLOEXEC)", libc.fcntl(fd, 1030, 0));
}

export function setNonBlocking(fd: number, nonBlocking: boolean): void {
  const flags = check("fcntl(F_GETFL)", libc.fcntl(fd, F_GETFL, 0));
  const next = nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags) check("fcntl(F_SETFL)", libc.fcntl(fd, F_SETFL, next));
}

/** True if fd is an open descriptor in this process. */
export function isOpenFd(fd: number): boolean {
  return libc.fcntl(fd, 1 /* F_GETFD */, 0) >= 0;
}

/** Size of the file behind fd (memfds, regular files). */
export function fdSize(fd: number): number {
  return check("lseek", libc.lseek(fd, 0, 2 /* SEEK_END */));
}

/** Which file an fd refers to ("dev:ino"): two fds of one file give the same string. */
export function fileIdentity(fd: number): string {
  const st = fstatSync(fd, { bigint: true });
  return `${st.dev}:${st.ino}`;
}

/**
 * Takes an exclusive flock(2) on an open file without waiting. Returns false if
 * another open file description holds it; the kernel drops the lock when the
 * last fd of ours closes, so a killed holder never leaves it taken.
 */
export function tryLockExclusive(fd: number): boolean {
  for (;;) {
    if (libc.flock(fd, LOCK_EX | LOCK_NB) === 0) return true;
    const e = errno();
    if (e === EAGAIN) return false;
    if (e !== EINTR) throw new SysError("flock", e);
  }
}
