import { MFD_CLOEXEC, check, libc } from "./libc.js";
import { closeFd } from "./fd.js";

/** Creates an anonymous shared-memory file of the given size (close-on-exec). */
export function createMemfd(name: string, size: number): number {
  const fd = check("memfd_create", libc.memfd_create(name, MFD_CLOEXEC));
  try {
    check("ftruncate", libc.ftruncate(fd, size));
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

export function truncateFd(fd: number, size: number): void {
  check("ftruncate", libc.ftruncate(fd, size));
}
