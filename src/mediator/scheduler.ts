/**
 * The scheduler: time-slices the parent's one engine between vGPUs by weight.
 * The next submission comes from the vGPU with the least busy time per unit of
 * weight; its engine context (GPRs) is loaded, its flattened commands run from
 * a host-owned shadow batch, and a watchdog preempts a submission that runs past
 * its budget: the engine is reset and that vGPU gets a hang error, the others
 * carry on. It reaches the parent only through the host's NativeDriver.
 */
import { EngineError, Irq } from "../abi/index.js";
import { NativeDriver, type ParentGpu } from "../gpu/index.js";
import type { Submission, Vgpu } from "./vgpu/index.js";
import { SampleLog } from "../base/index.js";

export interface SchedulerOptions {
  /** Commands one submission may run before the watchdog preempts it. */
  readonly commandBudget?: number;
  /** Milliseconds one submission may run before the watchdog preempts it. */
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
  totalBusyMs = 0;
  /** Length in seconds of every tick that put work on the engine (for the tick-length histogram). */
  readonly tickSeconds = new SampleLog();
  private worked = false;

  constructor(
    gpu: ParentGpu,
    host: { base: number; size: number },
    private readonly options: SchedulerOptions = {},
  ) {
    // The host's own range holds the ring and the shadow batch; guests never map it.
    // Scheduled: the scheduler decides what runs, and for how long.
    this.host = new NativeDriver(gpu, {
      base: host.base,
      size: host.size,
      ringBytes: 64 << 10,
      batchBytes: 8 << 20,
      scheduled: true,
    });
    this.host.handleInterrupts((bits) => {
      // Completions belong to whoever runs on the engine now.
      const v = this.current;
      if (!v) return;
      const vbits = bits & (Irq.USER | Irq.FLUSH);
      if (vbits) v.irq.raise(vbits);
    });
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

  /** The submission on the engine now, if one is part-way through. */
  private running: { w: Submission; started: number; deadline: number; executed: number } | undefined;

  /**
   * Runs one slice of engine time: continues the submission on the engine, or
   * starts the most deserving one. Slices are short so the trap path (served
   * between ticks) never waits for a whole submission. Returns true if more
   * work is waiting.
   */
  tick(): boolean {
    this.worked = false;
    const t0 = performance.now();
    const more = this.step();
    if (this.worked) this.tickSeconds.record((performance.now() - t0) / 1000);
    return more;
  }

  private step(): boolean {
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
      this.worked = true;
      if (!this.start(next.engine.queue.shift()!)) return this.pending;
    }
    this.worked = true;
    this.slice();
    return this.running !== undefined || this.pending;
  }

  /** Runs until no vGPU has work left (bounded by each submission's watchdog). */
  drain(): void {
    while (this.tick());
  }

  private now(): number {
    return this.options.clock ? this.options.clock() : performance.now();
  }

  /** Loads a submission into the shadow batch and onto the engine. */
  private start(w: Submission): boolean {
    const v = w.vgpu;
    if ((w.commands.length + 1) * 4 > this.host.batchBytes) {
      v.engine.failed(EngineError.BAD_COMMAND, 0, false);
      return false;
    }
    this.host.loadContext(v.engine.gpr);
    this.current = v;
    v.engine.started();
    const started = this.now();
    // The shadow batch lives in host memory the guests never map.
    this.host.submitBatch(w.commands);
    this.running = { w, started, deadline: started + (this.options.timeBudgetMs ?? 500), executed: 0 };
    return true;
  }

  /** About a millisecond of engine time for the running submission; finishes it when it is done. */
  private slice(): void {
    const r = this.running!;
    const host = this.host;
    const t0 = this.now();
    const sliceEnd = t0 + (this.options.sliceMs ?? 1);
    do r.executed += host.advance(64);
    while (!host.idle && this.now() < sliceEnd);
    const t1 = this.now();
    r.w.vgpu.stats.busyMs += t1 - t0;
    this.totalBusyMs += t1 - t0;
    const budget = this.options.commandBudget ?? 1 << 20;
    if (!host.idle && r.executed < budget && t1 < r.deadline) return; // more slices to come
    this.finish(r.w);
  }

  private finish(w: Submission): void {
    const v = w.vgpu;
    const host = this.host;
    this.running = undefined;
    this.current = undefined;
    host.saveContext(v.engine.gpr);
    // Explicitly mapped guest frames go back before the guest hears about completion.
    v.mpt?.release?.();
    const code = host.error;
    if (code !== EngineError.NONE) {
      const address = host.errorAddress;
      host.resetEngine();
      v.engine.failed(code, address, false);
    } else if (!host.idle) {
      // Watchdog: preempt the hung submission, reset the engine, blame only its vGPU.
      host.resetEngine();
      v.engine.failed(0, 0, true);
    } else {
      v.engine.completed(w);
    }
  }
}
