/**
 * The scheduler: time-slices the parent's one engine between vGPUs by weight.
 * The next submission comes from the vGPU with the least busy time per unit of
 * weight; its engine context (GPRs, the blit in progress) is loaded, its
 * flattened commands run from a host-owned shadow batch, one slice at a time:
 * a submission still running when another vGPU deserves the engine more is
 * preempted and resumed later, exactly where it stopped. A watchdog counts each
 * submission's engine time: past its budget, the engine is reset and that vGPU
 * gets a hang error, the others carry on. It reaches the parent only through
 * the host's NativeDriver.
 *
 * A vGPU whose guest memory is served by messages waits off the engine, never
 * on it: before its submission starts, the guest pages its commands reach are
 * staged in one DMA batch; after it completes, what the engine wrote goes back
 * in another, and only then does the guest see the head move and the
 * interrupt. Meanwhile the vGPU is skipped and everyone else runs; the wait
 * counts against the submission's watchdog (the DMA deadline is what is left of it).
 */
import { EngineError, Irq } from "../abi/index.js";
import type { MgpuError } from "../base/index.js";
import { type EngineContext, NativeDriver, type ParentGpu } from "../gpu/index.js";
import type { Submission, Vgpu } from "./vgpu/index.js";
import { pagesOfFootprint } from "./vgpu/staging.js";
import { SampleLog } from "../base/index.js";

export interface SchedulerOptions {
  /** Engine steps one submission may run before the watchdog preempts it. */
  readonly commandBudget?: number;
  /** Engine milliseconds one submission may run (summed over its slices) before the watchdog preempts it. */
  readonly timeBudgetMs?: number;
  /** Where busy time comes from (tests use a deterministic one). */
  readonly clock?: () => number;
  /** Engine time per tick before the loop serves traps again (default 1 ms). */
  readonly sliceMs?: number;
  /** Bytes of guest commands scanned per tick, over all vGPUs (default 256 KiB). */
  readonly scanBytesPerTick?: number;
  /** Asked between engine runs and scan steps: true ends the tick early (a trap is waiting). */
  readonly yieldTo?: () => boolean;
}

/** Bytes scanned between two looks at `yieldTo`. */
const SCAN_STEP_BYTES = 64 << 10;

/** Engine steps between two looks at the clock (a run also stops after one band of blit work). */
const CLOCK_CHECK_STEPS = 64;

/** A submission on the engine, or set aside part-way with its engine context saved. */
interface Running {
  readonly w: Submission;
  /** Engine time it has had so far (what the watchdog counts). */
  engineMs: number;
  executed: number;
  /** Dword of its commands the shadow batch starts with (0, or where it was resumed). */
  loadedAt: number;
  /** Set while it is off the engine: where to resume. */
  saved?: { offset: number; context: EngineContext };
}

export interface SchedulerStats {
  /** Submissions taken off the engine part-way for another vGPU, and resumed later. */
  preemptions: number;
  /** Longest stretch the engine ran between two looks at the clock (ms): a bound on the longest step. */
  longestRunMs: number;
  /** Longest tick (scanning plus a slice): how long the loop can be away from traps (ms, real time). */
  longestTickMs: number;
}

export class Scheduler {
  readonly vgpus: Vgpu[] = [];
  readonly stats: SchedulerStats = { preemptions: 0, longestRunMs: 0, longestTickMs: 0 };
  private current: Vgpu | undefined;
  private readonly host: NativeDriver;
  /** The submission on the engine now. */
  private running: Running | undefined;
  /** Submissions preempted part-way, one per vGPU at most (a vGPU's submissions run in order). */
  private readonly preempted = new Map<Vgpu, Running>();
  totalBusyMs = 0;
  /** Length in seconds of every tick that put work on the engine (for the tick-length histogram). */
  readonly tickSeconds = new SampleLog();
  private worked = false;

  constructor(
    gpu: ParentGpu,
    host: { base: number; size: number },
    private readonly options: SchedulerOptions = {},
  ) {
    // The host's own range holds the ring and the shadow batch: private memory no VMM's fd reaches.
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

  /** Most flattened bytes one submission may have (its shadow batch, less the batch end). */
  get maxSubmissionBytes(): number {
    return this.host.batchBytes - 4;
  }

  /** Engine time (ms) one submission may have, time waiting for its guest memory included. */
  get watchdogMs(): number {
    return this.options.timeBudgetMs ?? 500;
  }

  add(v: Vgpu): void {
    this.vgpus.push(v);
    v.engine.scheduler = this;
  }

  /**
   * Takes a vGPU off the engine for good: its running or preempted submission
   * is dropped (the engine is reset if it was on it), so nothing of it runs
   * once this returns and its memory can be handed to someone else.
   */
  remove(v: Vgpu): void {
    this.drop(v);
    const i = this.vgpus.indexOf(v);
    if (i >= 0) this.vgpus.splice(i, 1);
    if (v.engine.scheduler === this) v.engine.scheduler = undefined;
  }

  /** Drops whatever of `v` is on or set aside for the engine (remove, engine reset, FLR). */
  drop(v: Vgpu): void {
    this.preempted.delete(v);
    if (this.running?.w.vgpu === v) {
      this.host.resetEngine();
      this.running = undefined;
      this.current = undefined;
    }
    v.mpt?.cancel();
  }

  get pending(): boolean {
    return (
      this.running !== undefined ||
      this.preempted.size > 0 ||
      // A vGPU waiting for its guest memory is not work: the DMA reply wakes the loop.
      this.vgpus.some((v) => !v.engine.waiting && (v.pending || v.engine.scanPending))
    );
  }

  /**
   * Runs one slice of engine time for the most deserving vGPU (least busy
   * time per unit of weight): continues its preempted submission or starts
   * its next one, after scanning a bounded amount of waiting commands. Slices
   * are short so the trap path (served between ticks) never waits for a whole
   * submission; one still running at the end of a slice is preempted when
   * another vGPU deserves the engine more. Returns true if more work is waiting.
   */
  tick(): boolean {
    this.worked = false;
    const t0 = performance.now();
    try {
      return this.tickOnce();
    } finally {
      const took = performance.now() - t0;
      if (took > this.stats.longestTickMs) this.stats.longestTickMs = took;
      if (this.worked) this.tickSeconds.record(took / 1000);
    }
  }

  private tickOnce(): boolean {
    this.scan();
    const next = this.pick();
    if (!next) return this.pending;
    this.worked = true;
    if (this.running && this.running.w.vgpu !== next) this.preempt();
    if (!this.running) {
      const saved = this.preempted.get(next);
      if (saved) {
        this.preempted.delete(next);
        this.resume(saved);
      } else if (!this.start(next.engine.queue.shift()!)) return this.pending;
    }
    this.slice();
    return this.pending;
  }

  /** Runs until no vGPU has work left (bounded by each submission's watchdog). */
  drain(): void {
    while (this.tick());
  }

  /** Where the next tick's scanning starts (round robin, so one flood cannot starve the others' scans). */
  private scanTurn = 0;

  /** Scans waiting submissions, a bounded amount per tick, taking the vGPUs in turn. */
  private scan(): void {
    let left = this.options.scanBytesPerTick ?? 256 << 10;
    const n = this.vgpus.length;
    for (let k = 0; k < n && left > 0; k++) {
      const v = this.vgpus[(this.scanTurn + k) % n]!;
      while (left > 0 && v.engine.scanPending) {
        left -= Math.max(4, v.engine.scanStep(Math.min(left, SCAN_STEP_BYTES)));
        if (this.options.yieldTo?.()) left = 0;
      }
    }
    this.scanTurn = n > 0 ? (this.scanTurn + 1) % n : 0;
  }

  private pick(): Vgpu | undefined {
    let next: Vgpu | undefined;
    let best = Infinity;
    for (const v of this.vgpus) {
      if (this.running?.w.vgpu !== v && !this.preempted.has(v) && (!v.pending || v.engine.waiting)) continue;
      const score = v.stats.busyMs / v.type.weight;
      // The running submission keeps the engine on a tie (no switch for nothing).
      if (score < best || (score === best && this.running?.w.vgpu === v)) {
        best = score;
        next = v;
      }
    }
    return next;
  }

  private now(): number {
    return this.options.clock ? this.options.clock() : performance.now();
  }

  /** Puts a submission on the engine: its GPRs, its commands in the shadow batch (host memory). */
  private start(w: Submission): boolean {
    const v = w.vgpu;
    if (w.commands.length * 4 > this.maxSubmissionBytes) {
      v.engine.failed(EngineError.BAD_COMMAND, 0, false);
      return false;
    }
    if (!w.staged && !this.stage(w)) {
      v.engine.queue.unshift(w); // it waits at the head of its queue for its pages
      return false;
    }
    this.host.loadContext(v.engine.gpr);
    this.current = v;
    v.engine.started();
    this.host.submitBatch(w.commands);
    this.running = { w, engineMs: w.dmaMs, executed: 0, loadedAt: 0 };
    return true;
  }

  /**
   * Stages the guest pages a submission reaches: true if there is nothing to
   * wait for; else one DMA batch goes out and the submission starts on a
   * later tick, once its pages are in.
   */
  private stage(w: Submission): boolean {
    const v = w.vgpu;
    const mpt = v.mpt;
    const pages = mpt && w.footprint ? pagesOfFootprint(v.gpu.gtt, mpt, w.footprint) : undefined;
    if (!mpt || !pages || pages.fetch.length + pages.blank.length === 0) {
      w.staged = true;
      return true;
    }
    const left = Math.max(1, this.watchdogMs - w.dmaMs);
    this.wait(
      v,
      w,
      (done) => mpt.stage("run", pages.fetch, pages.blank, left, done),
      () => (w.staged = true),
    );
    return false;
  }

  /**
   * Parks `v` while `operation` (a DMA batch) is on the wire; its time is the
   * submission's (the watchdog counts it). `then` runs when it succeeded;
   * a failure stops that vGPU alone.
   */
  private wait(
    v: Vgpu,
    w: Submission,
    operation: (done: (e?: MgpuError) => void) => void,
    then: () => void,
  ): void {
    const engine = v.engine;
    const epoch = engine.epoch;
    const t0 = performance.now();
    engine.waiting = true;
    v.stats.dmaBatches++;
    operation((error) => {
      if (engine.epoch !== epoch) return; // its work was dropped meanwhile
      const took = performance.now() - t0;
      w.dmaMs += took;
      v.stats.dmaWaitMs += took;
      engine.waiting = false;
      if (error) engine.dmaFailed(error);
      else then();
    });
  }

  /** Takes the running submission off the engine part-way, keeping what it needs to resume. */
  private preempt(): void {
    const r = this.running!;
    // A flattened submission is one first-level batch: the position in it says where to go on
    // (the shadow batch holds its commands from `loadedAt` on).
    const offset = r.loadedAt + this.host.batchProgress;
    r.saved = { offset, context: this.host.suspend() };
    this.running = undefined;
    this.current = undefined;
    this.preempted.set(r.w.vgpu, r);
    this.stats.preemptions++;
  }

  private resume(r: Running): void {
    const saved = r.saved!;
    r.saved = undefined;
    this.current = r.w.vgpu;
    this.host.submitBatch(r.w.commands.subarray(saved.offset));
    this.host.resume(saved.context);
    r.loadedAt = saved.offset;
    this.running = r;
  }

  /**
   * About a slice of engine time for the running submission; finishes it when
   * it is done. The clock (and the watchdog, which counts engine time) is
   * looked at every few steps and at least every two bands of blit work, so
   * no step runs long unnoticed; a waiting trap (yieldTo) ends the slice early.
   */
  private slice(): void {
    const r = this.running!;
    const host = this.host;
    const t0 = this.now();
    const sliceEnd = t0 + (this.options.sliceMs ?? 1);
    const budget = this.options.commandBudget ?? 1 << 20;
    const deadline = this.options.timeBudgetMs ?? 500;
    let t = t0;
    do {
      r.executed += host.advance(CLOCK_CHECK_STEPS, host.bandBytes);
      const t1 = this.now();
      if (t1 - t > this.stats.longestRunMs) this.stats.longestRunMs = t1 - t;
      t = t1;
    } while (
      !host.idle &&
      t < sliceEnd &&
      r.engineMs + (t - t0) < deadline &&
      r.executed < budget &&
      !this.options.yieldTo?.()
    );
    r.w.vgpu.stats.busyMs += t - t0;
    this.totalBusyMs += t - t0;
    r.engineMs += t - t0;
    if (!host.idle && r.executed < budget && r.engineMs < deadline) return; // more slices to come
    this.finish(r);
  }

  private finish(r: Running): void {
    const w = r.w;
    const v = w.vgpu;
    const host = this.host;
    this.running = undefined;
    this.current = undefined;
    host.saveContext(v.engine.gpr);
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
      this.writeBack(r);
      return;
    }
    v.mpt?.cancel(); // failed: nothing it staged goes back
  }

  /** What the engine wrote into staged guest pages goes back before the guest hears of completion. */
  private writeBack(r: Running): void {
    const w = r.w;
    const v = w.vgpu;
    const mpt = v.mpt;
    if (!mpt || w.footprint === undefined) {
      mpt?.release();
      v.engine.completed(w);
      return;
    }
    // engineMs already holds the time it waited to be staged.
    const left = Math.max(1, this.watchdogMs - r.engineMs);
    this.wait(
      v,
      w,
      (done) => mpt.writeBack(left, done),
      () => {
        mpt.release();
        v.engine.completed(w);
      },
    );
  }
}
