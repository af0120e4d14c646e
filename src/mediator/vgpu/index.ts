/** A vGPU, one file per concern: assembly and reset, BAR2's display, PV, engine, interrupt and GTT blocks. */
export { Vgpu } from "./vgpu.js";
export { type Submission, VirtualEngine } from "./engine.js";
export { VirtualIrq } from "./irq.js";
export { GttShadow } from "./gtt-shadow.js";
export { type VgpuStats } from "./stats.js";
