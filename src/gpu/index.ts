/**
 * src/gpu — the parent GPU: a software GPU with a hardware-style interface, and
 * its native driver. What it shares with a vGPU (register offsets, command
 * encodings, GTT format) is abi/'s; import those from there.
 */
export { GPU_ID_VALUE, Reg } from "./registers.js";
export {
  GraphicsMemory,
  Gtt,
  GttFault,
  LocalMemory,
  type LocalSlice,
  type Run,
  type SystemMemory,
} from "./memory.js";
export { InterruptController } from "./interrupts.js";
export { DisplayEngine, type DisplayLimits, type Frame, frameToPng, pngToFrame } from "./display.js";
export {
  DEFAULT_BAND_BYTES,
  RenderEngine,
  type BlitProgress,
  type EngineContext,
  type EngineStats,
  type RenderEngineOptions,
} from "./engine.js";
export {
  SoftwareGpu,
  type ParentGpu,
  type ParentGpuOptions,
  DEFAULT_GTT_ENTRIES,
  DEFAULT_LOCAL_MEMORY,
} from "./parent-gpu.js";
export { NativeDriver, EngineFault, type NativeDriverOptions } from "./native-driver.js";
export { GpuError } from "./errors.js";
export { DESKTOP, desktopFrame, overlappingCopy, prng, workloadSuite } from "./workloads.js";
