import { constants } from "node:os";
import { MgpuError } from "../base/index.js";

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** The symbolic name of an errno value ("EAGAIN"), or "E<number>" if unknown. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** The numeric value of a symbolic errno name. */
export function errnoValue(name: keyof typeof constants.errno): number {
  return constants.errno[name];
}

/** A failed system call: carries the errno value, its name (`code`) and the call. */
export class SysError extends MgpuError {
  constructor(
    readonly syscall: string,
    readonly errno: number,
    detail?: string,
  ) {
    super(errnoName(errno), `${syscall} failed: ${errnoName(errno)}${detail ? ` (${detail})` : ""}`);
  }
}
