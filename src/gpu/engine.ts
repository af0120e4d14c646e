/**
 * The render engine: a command streamer that fetches from a ring buffer in
 * graphics memory (start/head/tail/control registers, wrap-around), follows
 * batch buffers (chained, and nested one level), and executes MI commands and
 * XY blits over graphics memory.
 *
 * Execution is explicit: `run(budget)` executes up to `budget` steps and
 * returns, so whoever owns the engine (the native driver, or the mediator's
 * scheduler) decides how long it runs. A step is one command, or one band of
 * a blit: blits move at most `bandBytes` per step and resume where they left
 * off, so no command, however large, holds the engine for more than a band.
 * The blit in progress is part of the engine context (`saveContext`), so the
 * owner can preempt mid-blit and resume later, bit-exact. A bad command, a GTT fault or a bad
 * batch nesting stops the engine with an error status and an interrupt; only
 * `reset()` restarts it. Nothing a command stream contains can throw out of it.
 */
import {
  BB_SECOND_LEVEL,
  BltOp,
  CLIENT_2D,
  CLIENT_MI,
  CommandCheck,
  EngineError,
  EngineStatus,
  FLUSH_NOTIFY,
  FLUSH_POST_SYNC_WRITE,
  GPR_COUNT,
  Irq,
  MAX_COMMAND_DWORDS,
  MiOp,
  RingCtl,
  bltOpcode,
  checkCommand,
  client,
  commandLength,
  decodeCommand,
  gprIndex,
  miOpcode,
} from "../abi/index.js";
import type { InterruptController } from "./interrupts.js";
import { type GraphicsMemory, GttFault } from "./memory.js";

/** Default most bytes one step of a blit writes (a band of rows, or of a linear move). */
export const DEFAULT_BAND_BYTES = 256 << 10;

export interface EngineStats {
  commands: number;
  blits: number;
  pixels: number;
  batches: number;
  /** Steps that ran one band of a blit. */
  bands: number;
  /** Most bytes written by any single step (never above bandBytes, except a single row wider than it). */
  longestStepBytes: number;
}

/** A blit part-way through: what the next band needs (plain numbers, so a context copy is a spread). */
export interface BlitProgress {
  readonly fill: boolean;
  readonly dst: number;
  readonly src: number;
  readonly dstPitch: number;
  readonly srcPitch: number;
  readonly rowBytes: number;
  readonly rows: number;
  /** Rows (or, for a linear move, bytes) done so far. */
  done: number;
  /** Whole lines on both sides: one linear range of rows * rowBytes bytes. */
  readonly linear: boolean;
  /** Bottom-up (the destination lies after the source). */
  readonly backwards: boolean;
  readonly color: number;
}

/** What a preempted workload needs to resume: its registers and the blit it was in. */
export interface EngineContext {
  readonly gpr: Uint32Array;
  readonly blit: BlitProgress | undefined;
}

export interface RenderEngineOptions {
  readonly bandBytes?: number;
}

export class RenderEngine {
  ringStart = 0;
  ringHead = 0;
  ringTail = 0;
  ringCtl = 0;
  error: number = EngineError.NONE;
  errorAddress = 0;
  readonly gpr = new Uint32Array(GPR_COUNT);
  readonly stats: EngineStats = {
    commands: 0,
    blits: 0,
    pixels: 0,
    batches: 0,
    bands: 0,
    longestStepBytes: 0,
  };
  readonly bandBytes: number;
  private blit: BlitProgress | undefined;
  /** 0: ring, 1: first-level batch, 2: second-level batch. */
  private level = 0;
  private batchPc = 0;
  /** Where a second-level batch returns to in the first-level one. */
  private returnPc = 0;
  private readonly cmd = new Uint32Array(MAX_COMMAND_DWORDS);

  constructor(
    private readonly memory: GraphicsMemory,
    private readonly interrupts: InterruptController,
    options: RenderEngineOptions = {},
  ) {
    this.bandBytes = Math.max(4096, options.bandBytes ?? DEFAULT_BAND_BYTES);
  }

  get ringSize(): number {
    return RingCtl.lengthPages(this.ringCtl) * 4096;
  }

  get idle(): boolean {
    return (
      this.error !== EngineError.NONE ||
      (this.blit === undefined &&
        this.level === 0 &&
        (this.ringHead === this.ringTail || !(this.ringCtl & RingCtl.ENABLE)))
    );
  }

  get status(): number {
    return (
      (this.idle ? EngineStatus.IDLE : 0) |
      (this.error !== EngineError.NONE ? EngineStatus.ERROR : 0) |
      (this.level > 0 ? EngineStatus.IN_BATCH : 0)
    );
  }

  /** A copy of what a preempted workload needs to resume: GPRs and the blit in progress. */
  saveContext(): EngineContext {
    return { gpr: this.gpr.slice(), blit: this.blit ? { ...this.blit } : undefined };
  }

  /** Loads a saved context (after reset, before the workload's commands are resubmitted). */
  restoreContext(context: EngineContext): void {
    this.gpr.set(context.gpr);
    this.blit = context.blit ? { ...context.blit } : undefined;
  }

  get batchAddress(): number {
    return this.level > 0 ? this.batchPc : 0;
  }

  /** Engine reset: stops whatever ran (mid-batch too), clears the error, empties the ring. */
  reset(): void {
    this.error = EngineError.NONE;
    this.errorAddress = 0;
    this.level = 0;
    this.batchPc = 0;
    this.returnPc = 0;
    this.blit = undefined;
    this.ringHead = this.ringTail;
    this.gpr.fill(0);
  }

  /**
   * Runs up to `budget` steps, and stops early once the steps have written
   * `byteBudget` bytes; returns the number of steps executed.
   */
  run(budget: number, byteBudget = Infinity): number {
    let executed = 0;
    const pixels0 = this.stats.pixels;
    while (executed < budget && !this.idle) {
      if (!this.step()) break;
      executed++;
      if ((this.stats.pixels - pixels0) * 4 >= byteBudget) break;
    }
    if (executed > 0 && this.idle && this.error === EngineError.NONE) this.interrupts.raise(Irq.IDLE);
    return executed;
  }

  /** Runs until idle or error (bounded, so a runaway batch chain cannot hang the caller). */
  runToIdle(limit = 1 << 24): boolean {
    let total = 0;
    while (!this.idle && total < limit) total += this.run(4096);
    return this.idle;
  }

  private fail(code: number, address: number): false {
    this.error = code;
    this.errorAddress = address;
    this.interrupts.raise(
      code === EngineError.GTT_FAULT ? Irq.GTT_FAULT | Irq.ENGINE_ERROR : Irq.ENGINE_ERROR,
    );
    return false;
  }

  /** Runs the next band of the blit in progress, or fetches and executes one command. */
  private step(): boolean {
    if (this.blit) {
      try {
        return this.band(this.blit);
      } catch (e) {
        if (e instanceof GttFault) return this.fail(EngineError.GTT_FAULT, e.gma);
        throw e;
      }
    }
    if (this.level === 0 && !(this.ringCtl & RingCtl.ENABLE))
      return this.fail(EngineError.RING_DISABLED, this.ringStart);
    const fromRing = this.level === 0;
    const address = fromRing ? this.ringStart + this.ringHead : this.batchPc;
    let length: number;
    try {
      const dw0 = this.fetch(fromRing, 0);
      const spec = decodeCommand(dw0);
      if (spec === undefined) return this.fail(EngineError.UNKNOWN_COMMAND, address);
      const len = commandLength(spec, dw0);
      if (len > MAX_COMMAND_DWORDS) return this.fail(EngineError.BAD_COMMAND, address);
      if (fromRing) {
        const available = (this.ringTail - this.ringHead + this.ringSize) % this.ringSize;
        if (len * 4 > available) return this.fail(EngineError.BAD_COMMAND, address);
      }
      this.cmd[0] = dw0;
      for (let i = 1; i < len; i++) this.cmd[i] = this.fetch(fromRing, i);
      // Lengths and fields as the command table defines them (the scanner checks the same).
      const check = checkCommand(spec, this.cmd, len);
      if (check !== CommandCheck.OK)
        return this.fail(
          check === CommandCheck.BAD_REGISTER ? EngineError.BAD_REGISTER : EngineError.BAD_COMMAND,
          address,
        );
      length = len;
    } catch (e) {
      if (e instanceof GttFault) return this.fail(EngineError.GTT_FAULT, e.gma);
      throw e;
    }
    // Advance before executing: a batch start replaces the position.
    if (fromRing) this.ringHead = (this.ringHead + length * 4) % this.ringSize;
    else this.batchPc += length * 4;
    this.stats.commands++;
    try {
      return this.execute(length, address);
    } catch (e) {
      if (e instanceof GttFault) return this.fail(EngineError.GTT_FAULT, e.gma);
      throw e;
    }
  }

  private fetch(fromRing: boolean, index: number): number {
    if (fromRing) return this.memory.read32(this.ringStart + ((this.ringHead + index * 4) % this.ringSize));
    return this.memory.read32(this.batchPc + index * 4);
  }

  private execute(length: number, address: number): boolean {
    const c = this.cmd;
    const dw0 = c[0]!;
    if (client(dw0) === CLIENT_MI) {
      switch (miOpcode(dw0)) {
        case MiOp.NOOP:
          return true;
        case MiOp.USER_INTERRUPT:
          this.interrupts.raise(Irq.USER);
          return true;
        case MiOp.BATCH_BUFFER_END:
          if (this.level === 2) {
            this.level = 1;
            this.batchPc = this.returnPc;
          } else if (this.level === 1) {
            this.level = 0;
          }
          return true;
        case MiOp.STORE_DATA_IMM: {
          const target = c[1]! + c[2]! * 0x100000000;
          this.memory.write32(target, c[3]!);
          if (length === 5) this.memory.write32(target + 4, c[4]!);
          return true;
        }
        case MiOp.LOAD_REGISTER_IMM: {
          for (let i = 1; i < length; i += 2) this.gpr[gprIndex(c[i]!)] = c[i + 1]!;
          return true;
        }
        case MiOp.FLUSH_DW: {
          if (dw0 & FLUSH_POST_SYNC_WRITE) {
            const target = ((c[1]! & ~7) >>> 0) + c[2]! * 0x100000000;
            this.memory.write32(target, c[3]!);
            if (length === 5) this.memory.write32(target + 4, c[4]!);
          }
          if (dw0 & FLUSH_NOTIFY) this.interrupts.raise(Irq.FLUSH);
          return true;
        }
        case MiOp.BATCH_BUFFER_START: {
          const target = c[1]! + c[2]! * 0x100000000;
          const nested = (dw0 & BB_SECOND_LEVEL) !== 0;
          if (this.level === 0) {
            this.level = 1; // from the ring: a first-level batch, returns to the ring
          } else if (nested) {
            if (this.level === 2) return this.fail(EngineError.BATCH_NESTING, address);
            this.returnPc = this.batchPc;
            this.level = 2;
          } // otherwise a chain: jump, same level
          this.batchPc = target;
          this.stats.batches++;
          return true;
        }
      }
      return this.fail(EngineError.UNKNOWN_COMMAND, address);
    }
    if (client(dw0) === CLIENT_2D) {
      const op = bltOpcode(dw0);
      if (op === BltOp.XY_COLOR_BLT) return this.colorBlt();
      if (op === BltOp.XY_SRC_COPY_BLT) return this.srcCopyBlt();
      return this.fail(EngineError.BAD_COMMAND, address);
    }
    return this.fail(EngineError.UNKNOWN_COMMAND, address);
  }

  private colorBlt(): boolean {
    const c = this.cmd;
    const pitch = c[1]! & 0xffff;
    // Coordinates are signed 16-bit; x2/y2 exclusive; clipped to the surface.
    const x1 = Math.max(0, s16(c[2]!)),
      y1 = Math.max(0, s16(c[2]! >>> 16));
    const x2 = Math.min(pitch / 4, s16(c[3]!)),
      y2 = s16(c[3]! >>> 16);
    if (x2 <= x1 || y2 <= y1) return true;
    const base = c[4]! + c[5]! * 0x100000000;
    const color = c[6]!;
    const width = x2 - x1;
    this.stats.blits++;
    return this.band({
      fill: true,
      dst: base + y1 * pitch + x1 * 4,
      src: 0,
      dstPitch: pitch,
      srcPitch: 0,
      rowBytes: width * 4,
      rows: y2 - y1,
      done: 0,
      linear: width * 4 === pitch, // whole lines: one linear fill
      backwards: false,
      color,
    });
  }

  private srcCopyBlt(): boolean {
    const c = this.cmd;
    const dstPitch = c[1]! & 0xffff;
    const srcPitch = c[7]! & 0xffff;
    let dx1 = s16(c[2]!),
      dy1 = s16(c[2]! >>> 16);
    let dx2 = s16(c[3]!);
    const dy2 = s16(c[3]! >>> 16);
    let sx = s16(c[6]!),
      sy = s16(c[6]! >>> 16);
    // Clip against both surfaces' left/top edges and widths, moving the other side along.
    if (dx1 < 0) {
      sx -= dx1;
      dx1 = 0;
    }
    if (dy1 < 0) {
      sy -= dy1;
      dy1 = 0;
    }
    if (sx < 0) {
      dx1 -= sx;
      sx = 0;
    }
    if (sy < 0) {
      dy1 -= sy;
      sy = 0;
    }
    dx2 = Math.min(dx2, dstPitch / 4, dx1 + (srcPitch / 4 - sx));
    const width = dx2 - dx1;
    const height = dy2 - dy1;
    if (width <= 0 || height <= 0) return true;
    const dst = c[4]! + c[5]! * 0x100000000;
    const src = c[8]! + c[9]! * 0x100000000;
    this.stats.blits++;
    const rowBytes = width * 4;
    const dstRow0 = dst + dy1 * dstPitch + dx1 * 4;
    const srcRow0 = src + sy * srcPitch + sx * 4;
    return this.band({
      fill: false,
      dst: dstRow0,
      src: srcRow0,
      dstPitch,
      srcPitch,
      rowBytes,
      rows: height,
      done: 0,
      // Whole lines on both sides: one linear, overlap-safe move (in bands, in the same direction).
      linear: dstPitch === srcPitch && rowBytes === dstPitch,
      // Overlap-safe order: bottom-up when the destination lies after the source.
      backwards: dstRow0 > srcRow0,
      color: 0,
    });
  }

  /**
   * One step of a blit: at most bandBytes (whole rows, or a piece of a linear
   * move), in the blit's overlap-safe direction, so running it in bands gives
   * exactly what running it at once would. Keeps the progress for the next step.
   */
  private band(b: BlitProgress): boolean {
    this.blit = b;
    this.stats.bands++;
    let written: number;
    try {
      written = b.linear ? this.linearBand(b) : this.rowBand(b);
    } catch (e) {
      this.blit = undefined;
      throw e;
    }
    if (written > this.stats.longestStepBytes) this.stats.longestStepBytes = written;
    this.stats.pixels += written / 4;
    if (b.done >= (b.linear ? b.rows * b.rowBytes : b.rows)) this.blit = undefined;
    return true;
  }

  private linearBand(b: BlitProgress): number {
    const total = b.rows * b.rowBytes;
    const n = Math.min(this.bandBytes, total - b.done);
    const at = b.backwards ? total - b.done - n : b.done;
    if (b.fill) this.memory.fill32(b.dst + at, n / 4, b.color);
    else this.memory.copy(b.dst + at, b.src + at, n);
    b.done += n;
    return n;
  }

  private rowBand(b: BlitProgress): number {
    const rows = Math.min(b.rows - b.done, Math.max(1, Math.floor(this.bandBytes / b.rowBytes)));
    for (let i = 0; i < rows; i++) {
      const row = b.backwards ? b.rows - 1 - (b.done + i) : b.done + i;
      if (b.fill) this.memory.fill32(b.dst + row * b.dstPitch, b.rowBytes / 4, b.color);
      else this.memory.copy(b.dst + row * b.dstPitch, b.src + row * b.srcPitch, b.rowBytes);
    }
    b.done += rows;
    return rows * b.rowBytes;
  }
}

function s16(v: number): number {
  return (v << 16) >> 16;
}
