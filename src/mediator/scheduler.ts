/**
 * The scheduler: time-slices the parent's one engine between vGPUs by weight.
 * The next workload comes from the vGPU with the least busy time per unit of
 * weight; its engine context (GPRs) is loaded, its flattened commands run from
 * a host-owned shadow batch, and a watchdog preempts a workload that runs past
 * its budget: the engine is reset and that vGPU gets a hang error, the others
 * carry on.
 */
import {
  EngineError,
  Irq,
  MI_BATCH_BUFFER_END,
  NativeDriver,
  type ParentGpu,
  miBatchBufferStart,
} from "../gpu/index.js";
import type { Vgpu, Workload } from "./vgpu.js";
import { VIrq } from "./vgpu.js";

export interface SchedulerOptions {
  /** Commands one workload may run before the watchdog preempts it. */
  readonly commandBudget?: number;
  /** Milliseconds one workload may run before the watchdog preempts it. */
  readonly timeBudgetMs?: number;
  /** Where busy time comes from (tests use a deterministic one). */
  readonly clock?: () => number;
}

export class Scheduler {
  readonly vgpus: Vgpu[] = [];
  private current: Vgpu | undefined;
  private readonly host: NativeDriver;
  private readonly batchGma: number;
  private readonly batchBytes: number;
  totalBusyMs = 0;

  constructor(
    private readonly gpu: ParentGpu,
    host: { base: number; size: number },
    private readonly options: SchedulerOptions = {},
  ) {
    // The host's own range holds the ring and the shadow batch; guests never map it.
    this.host = new NativeDriver(gpu, { base: host.base, size: host.size, ringBytes: 64 << 10 });
    this.batchBytes = 8 << 20;
    this.batchGma = this.host.alloc(this.batchBytes);
    gpu.autoRun = false; // the scheduler decides what runs, and for how long
    gpu.interrupts.imr = 0;
    gpu.interrupts.ier = 0xffffffff;
    gpu.interrupts.onInterrupt = (bits) => {
      // Completions belong to whoever runs on the engine now.
      const v = this.current;
      if (!v) return;
      let vbits = 0;
      if (bits & Irq.USER) vbits |= VIrq.USER;
      if (bits & Irq.FLUSH) vbits |= VIrq.FLUSH;
      if (vbits) v.raise(vbits);
    };
  }

  add(v: Vgpu): void {
    this.vgpus.push(v);
  }

  remove(v: Vgpu): void {
    const i = this.vgpus.indexOf(v);
    if (i >= 0) this.vgpus.splice(i, 1);
  }

  get pending(): boolean {
    return this.vgpus.some((v) => v.pending);
  }

  /** Runs one workload (the most deserving); returns true if more work is waiting. */
  tick(): boolean {
    let next: Vgpu | undefined;
    let best = Infinity;
    for (const v of this.vgpus) {
      if (!v.pending) continue;
      const score = v.stats.busyMs / v.type.weight;
      if (score < best) {
        best = score;
        next = v;
      }
    }
    if (!next) return false;
    this.runWorkload(next.queue.shift()!);
    return this.pending;
  }

  /** Runs until no vGPU has work left (bounded by each workload's watchdog). */
  drain(): void {
    while (this.tick());
  }

  private runWorkload(w: Workload): void {
    const v = w.vgpu;
    const engine = this.gpu.engine;
    const words = this.gpu.localMemory.words;
    if ((w.commands.length + 1) * 4 > this.batchBytes) {
      v.failed(EngineError.BAD_COMMAND, 0, false);
      return;
    }
    // The shadow batch lives in host memory, identity-mapped: GMA == local offset.
    words.set(w.commands, this.batchGma / 4);
    words[this.batchGma / 4 + w.commands.length] = MI_BATCH_BUFFER_END;
    engine.gpr.set(v.gpr);
    this.current = v;
    v.startWorkload();
    const now = this.options.clock ?? (() => performance.now());
    const t0 = now();
    this.host.submit(miBatchBufferStart(this.batchGma));
    const budget = this.options.commandBudget ?? 1 << 20;
    const deadline = t0 + (this.options.timeBudgetMs ?? 500);
    let executed = 0;
    while (!engine.idle && executed < budget && now() < deadline) executed += engine.run(1024);
    const elapsed = now() - t0;
    v.stats.busyMs += elapsed;
    this.totalBusyMs += elapsed;
    this.current = undefined;
    v.gpr.set(engine.gpr);
    // Explicitly mapped guest frames go back before the guest hears about completion.
    v.mpt?.release?.();
    if (engine.error !== EngineError.NONE) {
      const code = engine.error;
      const address = engine.errorAddress;
      engine.reset();
      v.failed(code, address, false);
    } else if (!engine.idle) {
      // Watchdog: preempt the hung workload, reset the engine, blame only its vGPU.
      engine.reset();
      v.failed(0, 0, true);
    } else {
      v.completed(w);
    }
  }
}
