/** src/gpu — the parent GPU: a software GPU with a hardware-style interface, and its native driver. */
export * from "./registers.js";
export * from "./commands.js";
export {
  GraphicsMemory,
  Gtt,
  GttFault,
  LocalMemory,
  PAGE_SIZE,
  GTT_SYSTEM,
  GTT_VALID,
  gttEntry,
  type Run,
  type SystemMemory,
} from "./memory.js";
export { InterruptController } from "./interrupts.js";
export { DisplayEngine, type DisplayLimits, type Frame, frameToPng, pngToFrame } from "./display.js";
export { RenderEngine, type EngineStats } from "./engine.js";
export {
  SoftwareGpu,
  type ParentGpu,
  type ParentGpuOptions,
  DEFAULT_GTT_ENTRIES,
  DEFAULT_LOCAL_MEMORY,
} from "./parent-gpu.js";
export { NativeDriver, EngineFault, type NativeDriverOptions } from "./native-driver.js";
export {
  type BlitOp,
  type Surface,
  type Workload,
  DESKTOP,
  desktopFrame,
  encodeOps,
  overlappingCopy,
  prng,
  workloadSuite,
} from "./workloads.js";
