import {
  F_ADD_SEALS,
  F_GET_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  check,
  libc,
} from "./libc.js";
import { closeFd } from "./fd.js";

export interface MemfdOptions {
  /**
   * Seal the size: neither the holder of this fd nor anyone it is passed to can
   * shrink it (which would SIGBUS every other mapping) or grow it.
   */
  readonly sealSize?: boolean;
}

/** Seals applied with `sealSize`: size fixed, and no further seals can be added or removed. */
export const SIZE_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

/** Creates an anonymous shared-memory file of the given size (close-on-exec). */
export function createMemfd(name: string, size: number, options: MemfdOptions = {}): number {
  const flags = MFD_CLOEXEC | (options.sealSize ? MFD_ALLOW_SEALING : 0);
  const fd = check("memfd_create", libc.memfd_create(name, flags));
  try {
    check("ftruncate", libc.ftruncate(fd, size));
    if (options.sealSize) check("fcntl(F_ADD_SEALS)", libc.fcntl(fd, F_ADD_SEALS, SIZE_SEALS));
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/** The seals on a memfd (F_SEAL_* bits). */
export function memfdSeals(fd: number): number {
  return check("fcntl(F_GET_SEALS)", libc.fcntl(fd, F_GET_SEALS, 0));
}

export function truncateFd(fd: number, size: number): void {
  check("ftruncate", libc.ftruncate(fd, size));
}
