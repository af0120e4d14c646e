/**
 * The parent ("physical") GPU: local memory, GTT, render engine, display
 * engine and interrupts behind one MMIO register space. `ParentGpu` is what
 * the mediator programs; `SoftwareGpu` is the implementation on this machine.
 */
import { Dispi, Irq, PAGE_SIZE, QEXT_BLOCK_SIZE, gprIndex } from "../abi/index.js";
import { DisplayEngine, type Frame, frameToPng } from "./display.js";
import { RenderEngine } from "./engine.js";
import { InterruptController } from "./interrupts.js";
import { GraphicsMemory, Gtt, LocalMemory, type SystemMemory } from "./memory.js";
import { GPU_ID_VALUE, Reg } from "./registers.js";

export interface ParentGpuOptions {
  /** Local memory (VRAM) bytes; default 512 MiB: 16 vGPUs of the smallest type, plus the host's share. */
  readonly localMemorySize?: number;
  /** GTT entries (4 KiB each); default 256 Ki = 1 GiB of graphics address space. */
  readonly gttEntries?: number;
  readonly maxWidth?: number;
  readonly maxHeight?: number;
}

export interface ParentGpu {
  readonly localMemory: LocalMemory;
  readonly gtt: Gtt;
  readonly memory: GraphicsMemory;
  readonly engine: RenderEngine;
  readonly display: DisplayEngine;
  readonly interrupts: InterruptController;
  /** Run the engine as soon as the ring tail moves (off when a scheduler drives it). */
  autoRun: boolean;
  /** Gives the engine time for up to `budget` commands (what autoRun does by itself); returns those run. */
  runEngine(budget: number): number;
  /** 32-bit MMIO (DISPI registers answer 16-bit accesses too). */
  mmioRead(offset: number, size?: 2 | 4): number;
  mmioWrite(offset: number, value: number, size?: 2 | 4): void;
  setSystemMemory(memory: SystemMemory | undefined): void;
  /** Emits a vblank: counts it and raises the VBLANK interrupt. */
  vblank(): void;
  /** The display's current image. */
  scanout(): Frame;
  screenshotPng(): Buffer;
  close(): void;
}

export const DEFAULT_LOCAL_MEMORY = 512 << 20;
export const DEFAULT_GTT_ENTRIES = 256 << 10;

export class SoftwareGpu implements ParentGpu {
  readonly localMemory: LocalMemory;
  readonly gtt: Gtt;
  readonly memory: GraphicsMemory;
  readonly engine: RenderEngine;
  readonly display: DisplayEngine;
  readonly interrupts = new InterruptController();
  /** Local-memory offset of the scan-out framebuffer. */
  displayBase = 0;
  private faultAddress = 0;
  /** Run the engine as soon as the tail moves (the native driver's mode); a scheduler turns this off. */
  autoRun = true;

  constructor(options: ParentGpuOptions = {}) {
    this.localMemory = new LocalMemory(options.localMemorySize ?? DEFAULT_LOCAL_MEMORY);
    this.gtt = new Gtt(options.gttEntries ?? DEFAULT_GTT_ENTRIES);
    this.memory = new GraphicsMemory(this.localMemory, this.gtt);
    this.engine = new RenderEngine(this.memory, this.interrupts);
    this.display = new DisplayEngine({
      maxWidth: options.maxWidth ?? 2560,
      maxHeight: options.maxHeight ?? 1600,
      memorySize: this.localMemory.size,
    });
  }

  setSystemMemory(memory: SystemMemory | undefined): void {
    this.memory.setSystemMemory(memory);
  }

  runEngine(budget: number): number {
    return this.engine.run(budget);
  }

  mmioRead(offset: number, size: 2 | 4 = 4): number {
    if (offset >= Reg.DISPI && offset < Reg.DISPI + Dispi.COUNT * 2)
      return this.display.readDispi((offset - Reg.DISPI) >> 1);
    const e = this.engine;
    const gpr = gprIndex(offset);
    if (gpr >= 0) return e.gpr[gpr]!;
    if (offset >= Reg.GTT_BASE && offset < Reg.GTT_BASE + this.gtt.entries * 8) {
      const i = (offset - Reg.GTT_BASE) >> 3;
      return offset & 4 ? this.gtt.hi[i]! : this.gtt.lo[i]!;
    }
    let v: number;
    switch (offset) {
      case Reg.GPU_ID:
        v = GPU_ID_VALUE;
        break;
      case Reg.GPU_CAPS:
        v = 0;
        break;
      case Reg.LOCAL_MEMORY_SIZE:
        v = this.localMemory.size >>> 0;
        break;
      case Reg.GTT_ENTRIES:
        v = this.gtt.entries;
        break;
      case Reg.ISR:
        v = this.interrupts.isr;
        break;
      case Reg.IMR:
        v = this.interrupts.imr;
        break;
      case Reg.IIR:
        v = this.interrupts.iir;
        break;
      case Reg.IER:
        v = this.interrupts.ier;
        break;
      case Reg.QEXT_SIZE:
        v = QEXT_BLOCK_SIZE;
        break;
      case Reg.QEXT_BYTEORDER:
        v = this.display.readByteOrder();
        break;
      case Reg.DISPLAY_BASE:
        v = this.displayBase;
        break;
      case Reg.VBLANK_COUNT:
        v = this.display.vblanks;
        break;
      case Reg.RING_START:
        v = e.ringStart;
        break;
      case Reg.RING_HEAD:
        v = e.ringHead;
        break;
      case Reg.RING_TAIL:
        v = e.ringTail;
        break;
      case Reg.RING_CTL:
        v = e.ringCtl;
        break;
      case Reg.ENGINE_STATUS:
        v = e.status;
        break;
      case Reg.ENGINE_ERROR:
        v = e.error;
        break;
      case Reg.ENGINE_ERROR_ADDR:
        v = e.errorAddress;
        break;
      case Reg.BB_ADDR:
        v = e.batchAddress;
        break;
      case Reg.FAULT_ADDR_LO:
        v = (e.error ? e.errorAddress : this.faultAddress) >>> 0;
        break;
      case Reg.FAULT_ADDR_HI:
        v = 0;
        break;
      default:
        v = 0;
    }
    return size === 2 ? v & 0xffff : v >>> 0;
  }

  mmioWrite(offset: number, value: number, _size: 2 | 4 = 4): void {
    value >>>= 0;
    if (offset >= Reg.DISPI && offset < Reg.DISPI + Dispi.COUNT * 2) {
      this.display.writeDispi((offset - Reg.DISPI) >> 1, value);
      return;
    }
    if (offset >= Reg.GTT_BASE && offset < Reg.GTT_BASE + this.gtt.entries * 8) {
      const i = (offset - Reg.GTT_BASE) >> 3;
      if (offset & 4) this.gtt.set(i, this.gtt.lo[i]!, value);
      else this.gtt.set(i, value, this.gtt.hi[i]!);
      return;
    }
    const e = this.engine;
    const gpr = gprIndex(offset);
    if (gpr >= 0) {
      e.gpr[gpr] = value; // the engine context, as a host driver saves and restores it
      return;
    }
    switch (offset) {
      case Reg.IMR:
        this.interrupts.imr = value;
        return;
      case Reg.IIR:
        this.interrupts.clear(value);
        return;
      case Reg.IER:
        this.interrupts.ier = value;
        return;
      case Reg.QEXT_BYTEORDER:
        this.display.writeByteOrder(value);
        return;
      case Reg.DISPLAY_BASE:
        this.displayBase = value - (value % PAGE_SIZE);
        return;
      case Reg.RING_START:
        e.ringStart = value - (value % PAGE_SIZE);
        return;
      case Reg.RING_HEAD:
        e.ringHead = (value & ~3) % e.ringSize;
        return;
      case Reg.RING_CTL:
        e.ringCtl = value;
        return;
      case Reg.RING_TAIL:
        e.ringTail = (value & ~3) % e.ringSize;
        if (this.autoRun) e.runToIdle();
        return;
      case Reg.ENGINE_RESET:
        if (value & 1) e.reset();
        return;
      default:
        return; // read-only or unknown: dropped
    }
  }

  vblank(): void {
    this.display.vblanks++;
    this.interrupts.raise(Irq.VBLANK);
  }

  scanout(): Frame {
    return this.display.scanout(this.localMemory.bytes.subarray(this.displayBase));
  }

  screenshotPng(): Buffer {
    return frameToPng(this.scanout());
  }

  close(): void {
    this.localMemory.close();
  }
}
