/** src/mediator — vGPUs with mediated pass-through on one parent GPU. */
export { Mediator, MediatorError, type MediatorOptions } from "./mediator.js";
export { Scheduler, type SchedulerOptions } from "./scheduler.js";
export { Scanner, ScanError, type Partition, type ScanLimits, type ScanRejection } from "./scanner.js";
export { type VgpuType, defaultTypes } from "./types.js";
export { GttShadow, type Submission, Vgpu, type VgpuStats, VirtualEngine, VirtualIrq } from "./vgpu/index.js";
export { RangePool } from "./pool.js";
