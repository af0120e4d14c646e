import { MgpuError } from "../base/index.js";

/**
 * The management layer's errors. `EUSAGE` and `EINVAL` are the caller's
 * mistakes (the CLI exits 2 for them); the others are the state of things
 * (exit 1): `EBUSY` a VMM holds the vGPU, `EEXIST`/`ENOENT` definitions and
 * vGPUs, `ELOCKED` another daemon owns the state directory, `EADDRINUSE` a
 * live server answers on a socket path, `EPERM` a peer or file we refuse,
 * `EBROKEN` a definition file that is not a valid definition, `ENODISPLAY` a
 * vGPU whose guest set no display mode.
 */
export type ManagerCode =
  | "EUSAGE"
  | "EINVAL"
  | "EBUSY"
  | "EEXIST"
  | "ENOENT"
  | "ELOCKED"
  | "EADDRINUSE"
  | "EPERM"
  | "ENODISPLAY"
  | "EBROKEN"
  | "ENOTYPE"
  | "ETIMEDOUT";

export class ManagerError extends MgpuError {
  declare readonly code: ManagerCode;
  constructor(code: ManagerCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** Codes that mean "you asked wrongly" rather than "it did not work": the CLI exits 2. */
export const USAGE_CODES: ReadonlySet<string> = new Set(["EUSAGE", "EINVAL", "ENOTYPE"]);
