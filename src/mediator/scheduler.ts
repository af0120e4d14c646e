/**
 * The scheduler: time-slices the parent's one engine between vGPUs by weight.
 * The next workload comes from the vGPU with the least busy time per unit of
 * weight; its engine context (GPRs) is loaded, its flattened commands run from
 * a host-owned shadow batch, and a watchdog preempts a workload that runs past
 * its budget: the engine is reset and that vGPU gets a hang error, the others
 * carry on.
 */
import { EngineError, Irq, MI_BATCH_BUFFER_END, miBatchBufferStart } from "../abi/index.js";
import { NativeDriver, type ParentGpu } from "../gpu/index.js";
import type { Vgpu, Workload } from "./vgpu.js";

export interface SchedulerOptions {
  /** Commands one workload may run before the watchdog preempts it. */
  readonly commandBudget?: number;
  /** Milliseconds one workload may run before the watchdog preempts it. */
  readonly timeBudgetMs?: number;
  /** Where busy time comes from (tests use a deterministic one). */
  readonly clock?: () => number;
  /** Engine time per tick before the loop serves traps again (default 1 ms). */
  readonly sliceMs?: number;
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
      const vbits = bits & (Irq.USER | Irq.FLUSH);
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

  /** The workload on the engine now, if one is part-way through. */
  private running: { w: Workload; started: number; deadline: number; executed: number } | undefined;

  /**
   * Runs one slice of engine time: continues the workload on the engine, or
   * starts the most deserving one. Slices are short so the trap path (served
   * between ticks) never waits for a whole workload. Returns true if more
   * work is waiting.
   */
  tick(): boolean {
    if (!this.running) {
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
      if (!this.start(next.queue.shift()!)) return this.pending;
    }
    this.slice();
    return this.running !== undefined || this.pending;
  }

  /** Runs until no vGPU has work left (bounded by each workload's watchdog). */
  drain(): void {
    while (this.tick());
  }

  private now(): number {
    return this.options.clock ? this.options.clock() : performance.now();
  }

  /** Loads a workload into the shadow batch and onto the engine. */
  private start(w: Workload): boolean {
    const v = w.vgpu;
    const words = this.gpu.localMemory.words;
    if ((w.commands.length + 1) * 4 > this.batchBytes) {
      v.failed(EngineError.BAD_COMMAND, 0, false);
      return false;
    }
    // The shadow batch lives in host memory, identity-mapped: GMA == local offset.
    words.set(w.commands, this.batchGma / 4);
    words[this.batchGma / 4 + w.commands.length] = MI_BATCH_BUFFER_END;
    this.gpu.engine.gpr.set(v.gpr);
    this.current = v;
    v.startWorkload();
    const started = this.now();
    this.host.submit(miBatchBufferStart(this.batchGma));
    this.running = { w, started, deadline: started + (this.options.timeBudgetMs ?? 500), executed: 0 };
    return true;
  }

  /** About a millisecond of engine time for the running workload; finishes it when it is done. */
  private slice(): void {
    const r = this.running!;
    const engine = this.gpu.engine;
    const t0 = this.now();
    const sliceEnd = t0 + (this.options.sliceMs ?? 1);
    do r.executed += engine.run(64);
    while (!engine.idle && this.now() < sliceEnd);
    const t1 = this.now();
    r.w.vgpu.stats.busyMs += t1 - t0;
    this.totalBusyMs += t1 - t0;
    const budget = this.options.commandBudget ?? 1 << 20;
    if (!engine.idle && r.executed < budget && t1 < r.deadline) return; // more slices to come
    this.finish(r.w);
  }

  private finish(w: Workload): void {
    const v = w.vgpu;
    const engine = this.gpu.engine;
    this.running = undefined;
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
