/** Shared by every layer and importing none: the error base class and the logger. */
export { MgpuError, hasCode } from "./errors.js";
export { type Logger, RateLimitedLog, defaultLogger, quietLogger } from "./log.js";
export { SampleLog } from "./samples.js";
