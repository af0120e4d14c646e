/** vGPU types: how a parent GPU is partitioned. */
export interface VgpuType {
  readonly name: string;
  readonly description: string;
  /** Slice of parent local memory (BAR0, the framebuffer): a power of two. */
  readonly localMemory: number;
  /** Graphics address space (its GTT partition). */
  readonly graphicsMemory: number;
  readonly maxWidth: number;
  readonly maxHeight: number;
  /** Scheduling weight (share of the engine relative to others). */
  readonly weight: number;
}

const MiB = 1 << 20;

export const defaultTypes: readonly VgpuType[] = [
  {
    name: "mgpu-1q",
    description: "1/16 of the GPU: 16 MiB, up to 1280×1024",
    localMemory: 16 * MiB,
    graphicsMemory: 32 * MiB,
    maxWidth: 1280,
    maxHeight: 1024,
    weight: 1,
  },
  {
    name: "mgpu-2q",
    description: "1/8 of the GPU: 32 MiB, up to 1920×1200",
    localMemory: 32 * MiB,
    graphicsMemory: 64 * MiB,
    maxWidth: 1920,
    maxHeight: 1200,
    weight: 2,
  },
  {
    name: "mgpu-4q",
    description: "1/4 of the GPU: 64 MiB, up to 2560×1600",
    localMemory: 64 * MiB,
    graphicsMemory: 128 * MiB,
    maxWidth: 2560,
    maxHeight: 1600,
    weight: 4,
  },
];
