import { MgpuError } from "../base/index.js";

/** A parent-GPU resource asked for wrongly or beyond what is there. */
export class GpuError extends MgpuError<"EINVAL" | "ENOSPC" | "E2BIG" | "EBUSY" | "ENOENT"> {}
