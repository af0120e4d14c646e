/**
 * The mediator: one parent GPU partitioned into vGPUs by type. It owns the
 * resource pools (local-memory slices, graphics-memory partitions), the
 * scheduler, and the parent's view of system memory, which it resolves per
 * vGPU through the hypervisor backend. A failed create leaves nothing allocated.
 */
import { randomUUID } from "node:crypto";
import { PAGE_SIZE } from "../abi/index.js";
import { type ParentGpu, SoftwareGpu } from "../gpu/index.js";
import type { MptFactory } from "../hypervisor/mpt.js";
import { type Logger, MgpuError, defaultLogger } from "../base/index.js";
import { IdPool, RangePool } from "./pool.js";
import { Scheduler, type SchedulerOptions } from "./scheduler.js";
import { type VgpuType, defaultTypes } from "./types.js";
import { Vgpu } from "./vgpu/index.js";

export interface MediatorOptions {
  /** How each vGPU reaches its guest's memory and interrupts: chosen by the caller, per backend. */
  readonly mpt: MptFactory;
  readonly gpu?: ParentGpu;
  readonly types?: readonly VgpuType[];
  /** Local memory and graphics memory kept for the host (ring, shadow batches). */
  readonly hostReserve?: number;
  readonly scheduler?: SchedulerOptions;
  readonly logger?: Logger;
}

/** Ids live in 16 bits of a GTT entry: at most this many vGPUs at once; removed ids are reused. */
export const MAX_VGPU_ID = 0xffff;

export class MediatorError extends MgpuError<"ENOTYPE" | "ENOSPC" | "EEXIST" | "ENOENT"> {}

export class Mediator {
  readonly gpu: ParentGpu;
  readonly types: readonly VgpuType[];
  readonly scheduler: Scheduler;
  private readonly local: RangePool;
  private readonly graphics: RangePool;
  private readonly vgpus = new Map<string, Vgpu>();
  private readonly byId = new Map<number, Vgpu>();
  /** Owner tags: a shadowed system GTT entry carries its vGPU's id in the 16 bits above bit 48. */
  private readonly ids = new IdPool(1, MAX_VGPU_ID);
  private readonly logger: Logger;
  private readonly mptFactory: MptFactory;

  constructor(options: MediatorOptions) {
    this.mptFactory = options.mpt;
    this.gpu = options.gpu ?? new SoftwareGpu();
    this.types = options.types ?? defaultTypes;
    this.logger = options.logger ?? defaultLogger();
    const reserve = options.hostReserve ?? 32 << 20;
    this.local = new RangePool(reserve, this.gpu.localMemory.size);
    this.graphics = new RangePool(reserve, this.gpu.gtt.aperture);
    this.scheduler = new Scheduler(this.gpu, { base: 0, size: reserve }, options.scheduler);
    this.gpu.setSystemMemory({
      page: (address) => {
        // Shadowed system entries carry the owning vGPU's id above bit 48.
        const v = this.byId.get(Number(address >> 48n));
        return v?.mpt?.mapGuestPage(address & ((1n << 48n) - 1n));
      },
      wrote: (address, offset, length) => {
        const v = this.byId.get(Number(address >> 48n));
        v?.mpt?.wrote(address & ((1n << 48n) - 1n), offset, length);
      },
    });
  }

  type(name: string): VgpuType {
    const t = this.types.find((x) => x.name === name);
    if (!t)
      throw new MediatorError(
        "ENOTYPE",
        `no vGPU type ${name}; types: ${this.types.map((x) => x.name).join(", ")}`,
      );
    return t;
  }

  /** How many more vGPUs of a type fit in what is free now. */
  availableInstances(name: string): number {
    const t = this.type(name);
    return Math.min(
      this.local.capacity(t.localMemory, t.localMemory),
      this.graphics.capacity(t.graphicsMemory, PAGE_SIZE),
    );
  }

  create(typeName: string, uuid: string = randomUUID(), mpt: MptFactory = this.mptFactory): Vgpu {
    const t = this.type(typeName);
    if (this.vgpus.has(uuid)) throw new MediatorError("EEXIST", `vGPU ${uuid} exists`);
    // BAR0 must be naturally aligned in the fd so the VMM can map it as one piece.
    const lm = this.local.alloc(t.localMemory, t.localMemory);
    if (lm === undefined) throw new MediatorError("ENOSPC", `no local memory left for ${t.name}`);
    const gm = this.graphics.alloc(t.graphicsMemory, PAGE_SIZE);
    if (gm === undefined) {
      this.local.free(lm);
      throw new MediatorError("ENOSPC", `no graphics memory left for ${t.name}`);
    }
    const id = this.ids.alloc();
    if (id === undefined) {
      this.local.free(lm);
      this.graphics.free(gm);
      throw new MediatorError("ENOSPC", `all ${MAX_VGPU_ID} vGPU ids are in use`);
    }
    let v: Vgpu;
    let attached = false;
    try {
      this.gpu.localMemory.attachSlice(lm, t.localMemory); // a fresh, zeroed, sealed memfd
      attached = true;
      v = new Vgpu(id, uuid, t, this.gpu, lm, gm, this.logger);
      v.mpt = mpt(v.pci, { forgetGuestPages: () => this.gpu.memory.forgetSystemPages() });
    } catch (e) {
      if (attached) this.gpu.localMemory.detachSlice(lm);
      this.local.free(lm);
      this.graphics.free(gm);
      this.ids.free(id);
      throw e;
    }
    this.vgpus.set(uuid, v);
    this.byId.set(id, v);
    this.scheduler.add(v);
    return v;
  }

  remove(uuid: string): void {
    const v = this.vgpus.get(uuid);
    if (!v) throw new MediatorError("ENOENT", `no vGPU ${uuid}`);
    this.scheduler.remove(v);
    v.destroy();
    // Its BAR mappings and whatever the VMM left mapped go now, not at some garbage collection.
    v.pci.close();
    this.gpu.localMemory.detachSlice(v.lmBase);
    this.local.free(v.lmBase);
    this.graphics.free(v.gm.base);
    this.vgpus.delete(uuid);
    this.byId.delete(v.id);
    this.ids.free(v.id); // only now: nothing of the old owner is left in the GTT or on the engine
  }

  get(uuid: string): Vgpu | undefined {
    return this.vgpus.get(uuid);
  }

  list(): Vgpu[] {
    return [...this.vgpus.values()];
  }
}
