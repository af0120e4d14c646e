/**
 * The host's own driver for the parent GPU: programs the GTT, the ring, batch
 * buffers and the display directly, with no mediation. It is the baseline that
 * every mediated figure is compared with.
 */
import {
  Dispi,
  DispiEnable,
  ENGINE_RESET_BIT,
  EngineError,
  EngineStatus,
  MI_BATCH_BUFFER_END,
  PAGE_SIZE,
  RingCtl,
  type Surface,
  type Workload,
  encodeOps,
  gttEntry,
  miBatchBufferStart,
} from "../abi/index.js";
import { MgpuError } from "../base/index.js";
import { GpuError } from "./errors.js";
import type { EngineContext } from "./engine.js";
import type { ParentGpu } from "./parent-gpu.js";
import { Reg } from "./registers.js";

/** The engine stopped on an error (`error`: ENGINE_ERROR, `address`: the command's GMA). */
export class EngineFault extends MgpuError<"EENGINE"> {
  constructor(
    readonly error: number,
    readonly address: number,
  ) {
    super("EENGINE", `engine stopped: error ${error} at 0x${address.toString(16)}`);
  }
}

export interface NativeDriverOptions {
  /** Local memory (and graphics address space) the driver owns: [base, base + size). */
  readonly base?: number;
  readonly size?: number;
  readonly ringBytes?: number;
  /** Room for one batch buffer (default 4 MiB). */
  readonly batchBytes?: number;
  /** The caller gives the engine its time (`advance`) instead of the parent running each submission at once. */
  readonly scheduled?: boolean;
}

export class NativeDriver {
  private next: number;
  private readonly end: number;
  readonly ringGma: number;
  readonly ringBytes: number;
  private tail = 0;
  private readonly batchGma: number;
  readonly batchBytes: number;

  constructor(
    readonly gpu: ParentGpu,
    options: NativeDriverOptions = {},
  ) {
    const base = options.base ?? 0;
    const size = options.size ?? Math.min(gpu.localMemory.size, gpu.gtt.aperture) - base;
    this.next = base;
    this.end = base + size;
    // GMA == local-memory offset for the driver's own range (an identity GTT).
    for (let page = base / PAGE_SIZE; page < this.end / PAGE_SIZE; page++)
      gpu.gtt.write(page, gttEntry("local", page * PAGE_SIZE));
    this.ringBytes = options.ringBytes ?? 64 << 10;
    this.batchBytes = options.batchBytes ?? 4 << 20;
    this.ringGma = this.alloc(this.ringBytes);
    this.batchGma = this.alloc(this.batchBytes);
    gpu.mmioWrite(Reg.RING_CTL, 0);
    gpu.mmioWrite(Reg.RING_START, this.ringGma);
    gpu.mmioWrite(Reg.RING_CTL, RingCtl.encode(this.ringBytes / PAGE_SIZE));
    gpu.mmioWrite(Reg.RING_HEAD, 0);
    if (options.scheduled) gpu.autoRun = false;
  }

  /** Page-aligned graphics memory from the driver's range. */
  alloc(bytes: number): number {
    const gma = this.next;
    const size = Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    if (gma + size > this.end) throw new GpuError("ENOSPC", "out of graphics memory");
    this.next += size;
    return gma;
  }

  allocSurface(width: number, height: number): Surface {
    const pitch = width * 4;
    return { gma: this.alloc(pitch * height), width, height, pitch };
  }

  /** Writes commands into the ring and moves the tail; the engine runs them. */
  submit(dwords: readonly number[]): void {
    const bytes = dwords.length * 4;
    if (bytes >= this.ringBytes)
      throw new GpuError("E2BIG", "command stream larger than the ring: use submitBatch");
    const ring = this.gpu.localMemory.words;
    const start = this.ringGma / 4;
    let t = this.tail / 4;
    const n = this.ringBytes / 4;
    for (const d of dwords) {
      ring[start + t] = d;
      t = (t + 1) % n;
    }
    this.tail = t * 4;
    this.gpu.mmioWrite(Reg.RING_TAIL, this.tail);
    this.check();
  }

  /** Puts commands in a batch buffer and starts it from the ring. */
  submitBatch(dwords: ArrayLike<number>): void {
    if ((dwords.length + 1) * 4 > this.batchBytes) throw new GpuError("E2BIG", "batch too large");
    const words = this.gpu.localMemory.words;
    words.set(dwords, this.batchGma / 4);
    words[this.batchGma / 4 + dwords.length] = MI_BATCH_BUFFER_END;
    this.submit(miBatchBufferStart(this.batchGma));
  }

  /** Like submitBatch, for streams up to the whole batch area (used to time large submissions). */
  submitBatchLarge(dwords: readonly number[]): void {
    this.submitBatch(dwords);
  }

  // ---- for a scheduler that drives the engine itself (`scheduled`) ----------

  /** Runs the engine for up to `budget` steps (and about `byteBudget` bytes of blits); returns those run. */
  advance(budget: number, byteBudget?: number): number {
    return this.gpu.runEngine(budget, byteBudget);
  }

  /** Most bytes one engine step writes (a band of a blit). */
  get bandBytes(): number {
    return this.gpu.engine.bandBytes;
  }

  /** Dwords of the batch from the last submitBatch the engine has gone past (0 before it started it). */
  get batchProgress(): number {
    const pc = this.gpu.mmioRead(Reg.BB_ADDR);
    return pc === 0 ? 0 : (pc - this.batchGma) / 4;
  }

  /**
   * Takes the running work off the engine, keeping what it needs to go on:
   * its GPRs and the blit in progress. The engine is reset (empty ring).
   */
  suspend(): EngineContext {
    const context = this.gpu.engine.saveContext();
    this.resetEngine();
    return context;
  }

  /** Loads a suspended context back (after submitting what is left of its commands). */
  resume(context: EngineContext): void {
    this.gpu.engine.restoreContext(context);
  }

  get idle(): boolean {
    return (this.gpu.mmioRead(Reg.ENGINE_STATUS) & EngineStatus.IDLE) !== 0;
  }

  /** ENGINE_ERROR (EngineError.NONE while it runs). */
  get error(): number {
    return this.gpu.mmioRead(Reg.ENGINE_ERROR);
  }

  get errorAddress(): number {
    return this.gpu.mmioRead(Reg.ENGINE_ERROR_ADDR);
  }

  /** Stops whatever runs, clears the error, empties the ring. */
  resetEngine(): void {
    this.gpu.mmioWrite(Reg.ENGINE_RESET, ENGINE_RESET_BIT);
  }

  /** Loads the engine context (the GPRs) before a submission. */
  loadContext(gpr: Uint32Array): void {
    for (let n = 0; n < gpr.length; n++) this.gpu.mmioWrite(Reg.GPR0 + 4 * n, gpr[n]!);
  }

  /** Saves the engine context after a submission. */
  saveContext(gpr: Uint32Array): void {
    for (let n = 0; n < gpr.length; n++) gpr[n] = this.gpu.mmioRead(Reg.GPR0 + 4 * n);
  }

  /** Takes the parent's interrupts: every event unmasked and enabled, each one handed to `handler`. */
  handleInterrupts(handler: (bits: number) => void): void {
    this.gpu.interrupts.onInterrupt = handler;
    this.gpu.mmioWrite(Reg.IMR, 0);
    this.gpu.mmioWrite(Reg.IER, 0xffffffff);
  }

  /** Throws if the engine stopped on an error. */
  check(): void {
    const error = this.gpu.mmioRead(Reg.ENGINE_ERROR);
    if (error !== EngineError.NONE) throw new EngineFault(error, this.gpu.mmioRead(Reg.ENGINE_ERROR_ADDR));
  }

  /** Allocates a workload's surfaces and runs its setup; returns the surfaces. */
  prepare(w: Workload): Record<string, Surface> {
    const surfaces: Record<string, Surface> = {};
    for (const [name, s] of Object.entries(w.surfaces)) surfaces[name] = this.allocSurface(s.width, s.height);
    if (w.setup.length > 0) this.submitBatch(encodeOps(w.setup, surfaces));
    return surfaces;
  }

  /** Runs a prepared workload's measured operations. */
  run(w: Workload, surfaces: Record<string, Surface>): void {
    this.submitBatch(encodeOps(w.ops, surfaces));
  }

  /** Mode set: a 32 bpp framebuffer at a surface, through the DISPI registers. */
  modeSet(surface: Surface): void {
    const g = this.gpu;
    const dispi = (index: number, value: number) => g.mmioWrite(Reg.DISPI + index * 2, value, 2);
    dispi(Dispi.ENABLE, 0);
    dispi(Dispi.XRES, surface.width);
    dispi(Dispi.YRES, surface.height);
    dispi(Dispi.BPP, 32);
    dispi(Dispi.ENABLE, DispiEnable.ENABLED | DispiEnable.LFB);
    g.mmioWrite(Reg.DISPLAY_BASE, surface.gma);
  }
}
