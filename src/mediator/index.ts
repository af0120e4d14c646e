/** src/mediator — vGPUs with mediated pass-through on one parent GPU. */
export { Mediator, MediatorError, type MediatorOptions } from "./mediator.js";
export { Scheduler, type SchedulerOptions } from "./scheduler.js";
export { Scanner, ScanError, type Partition, type ScanLimits, type ScanRejection } from "./scanner.js";
export { type VgpuType, defaultTypes } from "./types.js";
export {
  BAR2_SIZE,
  BOCHS_DEVICE,
  BOCHS_VENDOR,
  PV_MAGIC,
  PvInfo,
  VError,
  VIrq,
  VReg,
  rejectionCodes,
  Vgpu,
  type VgpuStats,
  type Workload,
} from "./vgpu.js";
export { RangePool } from "./pool.js";
