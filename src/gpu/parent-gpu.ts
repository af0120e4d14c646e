/**
 * The parent ("physical") GPU: local memory, GTT, render engine, display
 * engine and interrupts behind one MMIO register space. `ParentGpu` is what
 * the mediator programs; `SoftwareGpu` is the implementation on this machine.
 */
import { Dispi, ENGINE_RESET_BIT, Irq, PAGE_SIZE, QEXT_BLOCK_SIZE, gprIndex } from "../abi/index.js";
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
  /** Most bytes one engine step (a band of a blit) writes; default DEFAULT_BAND_BYTES. */
  readonly bandBytes?: number;
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
  runEngine(budget: number, byteBudget?: number): number;
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

/** One of the parent's plain registers: its read, and its write side effect (none: read-only). */
interface ParentRegister {
  readonly read: () => number;
  readonly write?: (value: number) => void;
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
  private readonly registers: Map<number, ParentRegister>;

  constructor(options: ParentGpuOptions = {}) {
    this.localMemory = new LocalMemory(options.localMemorySize ?? DEFAULT_LOCAL_MEMORY);
    this.gtt = new Gtt(options.gttEntries ?? DEFAULT_GTT_ENTRIES);
    this.memory = new GraphicsMemory(this.localMemory, this.gtt);
    this.engine = new RenderEngine(
      this.memory,
      this.interrupts,
      options.bandBytes !== undefined ? { bandBytes: options.bandBytes } : {},
    );
    this.display = new DisplayEngine({
      maxWidth: options.maxWidth ?? 2560,
      maxHeight: options.maxHeight ?? 1600,
      memorySize: this.localMemory.size,
    });
    this.registers = this.registerTable();
  }

  setSystemMemory(memory: SystemMemory | undefined): void {
    this.memory.setSystemMemory(memory);
  }

  runEngine(budget: number, byteBudget?: number): number {
    return this.engine.run(budget, byteBudget);
  }

  mmioRead(offset: number, size: 2 | 4 = 4): number {
    if (offset >= Reg.DISPI && offset < Reg.DISPI + Dispi.COUNT * 2)
      return this.display.readDispi((offset - Reg.DISPI) >> 1);
    const gpr = gprIndex(offset);
    if (gpr >= 0) return this.engine.gpr[gpr]!;
    if (offset >= Reg.GTT_BASE && offset < Reg.GTT_BASE + this.gtt.entries * 8) {
      const i = (offset - Reg.GTT_BASE) >> 3;
      return offset & 4 ? this.gtt.hi[i]! : this.gtt.lo[i]!;
    }
    const v = this.registers.get(offset)?.read() ?? 0;
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
    const gpr = gprIndex(offset);
    if (gpr >= 0) {
      this.engine.gpr[gpr] = value; // the engine context, as a host driver saves and restores it
      return;
    }
    this.registers.get(offset)?.write?.(value); // read-only or unknown: dropped
  }

  /** The registers outside the DISPI, GPR and GTT windows: what a read returns, what a write does. */
  private registerTable(): Map<number, ParentRegister> {
    const e = this.engine;
    const irq = this.interrupts;
    const display = this.display;
    return new Map<number, ParentRegister>([
      [Reg.GPU_ID, { read: () => GPU_ID_VALUE }],
      [Reg.GPU_CAPS, { read: () => 0 }],
      [Reg.LOCAL_MEMORY_SIZE, { read: () => this.localMemory.size }],
      [Reg.GTT_ENTRIES, { read: () => this.gtt.entries }],
      [Reg.ISR, { read: () => irq.isr }],
      [Reg.IMR, { read: () => irq.imr, write: (v) => void (irq.imr = v) }],
      [Reg.IIR, { read: () => irq.iir, write: (v) => irq.clear(v) }],
      [Reg.IER, { read: () => irq.ier, write: (v) => void (irq.ier = v) }],
      [Reg.QEXT_SIZE, { read: () => QEXT_BLOCK_SIZE }],
      [Reg.QEXT_BYTEORDER, { read: () => display.readByteOrder(), write: (v) => display.writeByteOrder(v) }],
      [
        Reg.DISPLAY_BASE,
        { read: () => this.displayBase, write: (v) => void (this.displayBase = v - (v % PAGE_SIZE)) },
      ],
      [Reg.VBLANK_COUNT, { read: () => display.vblanks }],
      [Reg.RING_START, { read: () => e.ringStart, write: (v) => void (e.ringStart = v - (v % PAGE_SIZE)) }],
      [Reg.RING_HEAD, { read: () => e.ringHead, write: (v) => void (e.ringHead = (v & ~3) % e.ringSize) }],
      [
        Reg.RING_TAIL,
        {
          read: () => e.ringTail,
          write: (v) => {
            e.ringTail = (v & ~3) % e.ringSize;
            if (this.autoRun) e.runToIdle();
          },
        },
      ],
      [Reg.RING_CTL, { read: () => e.ringCtl, write: (v) => void (e.ringCtl = v) }],
      [Reg.ENGINE_STATUS, { read: () => e.status }],
      [Reg.ENGINE_ERROR, { read: () => e.error }],
      [Reg.ENGINE_ERROR_ADDR, { read: () => e.errorAddress }],
      [Reg.ENGINE_RESET, { read: () => 0, write: (v) => v & ENGINE_RESET_BIT && e.reset() }],
      [Reg.BB_ADDR, { read: () => e.batchAddress }],
      [Reg.FAULT_ADDR_LO, { read: () => (e.error ? e.errorAddress : this.faultAddress) >>> 0 }],
      [Reg.FAULT_ADDR_HI, { read: () => 0 }],
    ]);
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
