/**
 * A vGPU: one PCI function on the toolkit that a stock guest sees as a Bochs
 * display (1234:1111, so the bochs DRM driver binds), with
 * - BAR0: its slice of the parent's local memory, an mmap area — never trapped;
 * - BAR2: MMIO, every access trapped: DISPI and QEMU's extension registers at
 *   the Bochs offsets, a paravirtual info block telling the guest its partition,
 *   virtual engine and interrupt registers, and its GTT partition on top.
 * Guest GTT writes are validated and shadowed into the parent's GTT; tail
 * writes are scanned into workloads for the scheduler; completions come back
 * as virtual interrupts on its MSI.
 */
import {
  DisplayEngine,
  type Frame,
  GTT_SYSTEM,
  GTT_VALID,
  PAGE_SIZE,
  type ParentGpu,
  frameToPng,
} from "../gpu/index.js";
import { Dispi, Reg } from "../gpu/index.js";
import type { Mpt } from "../hypervisor/mpt.js";
import { PciDevice, RegisterFile, type RegionHandler } from "../pci/index.js";
import { type Logger, RateLimitedLog } from "../base/index.js";
import { type Partition, ScanError, type ScanRejection, Scanner } from "./scanner.js";
import type { VgpuType } from "./types.js";

export const BOCHS_VENDOR = 0x1234;
export const BOCHS_DEVICE = 0x1111;
export const BAR2_SIZE = 1 << 20;

/** BAR2 layout. */
export const VReg = {
  EDID: 0x000,
  VGA_IOPORTS: 0x400,
  DISPI: 0x500,
  QEXT_SIZE: 0x600,
  QEXT_BYTEORDER: 0x604,
  PV_INFO: 0x800,
  // The virtual engine registers sit where the parent's do: a driver for one drives the other.
  ENGINE: Reg.RING_START,
  RING_START: Reg.RING_START,
  RING_HEAD: Reg.RING_HEAD,
  RING_TAIL: Reg.RING_TAIL,
  RING_CTL: Reg.RING_CTL,
  ENGINE_STATUS: Reg.ENGINE_STATUS,
  ENGINE_ERROR: Reg.ENGINE_ERROR,
  ENGINE_ERROR_ADDR: Reg.ENGINE_ERROR_ADDR,
  ENGINE_RESET: Reg.ENGINE_RESET,
  GPR0: Reg.GPR0,
  ISR: 0x3000,
  IMR: 0x3004,
  IIR: 0x3008,
  IER: 0x300c,
  GTT: 0x80000,
} as const;

/** Paravirtual info block ("MGPV"): where the guest's own resources are. */
export const PvInfo = {
  MAGIC: 0x00, // "MGPV"
  VERSION: 0x04,
  LM_BASE_LO: 0x08,
  LM_BASE_HI: 0x0c,
  LM_SIZE: 0x10,
  GM_BASE: 0x14,
  GM_SIZE: 0x18,
  GTT_OFFSET: 0x1c,
  GTT_ENTRIES: 0x20,
  MAX_WIDTH: 0x24,
  MAX_HEIGHT: 0x28,
} as const;
export const PV_MAGIC = 0x5650474d;

/** Virtual interrupt bits (the parent's, as a guest sees them). */
export const VIrq = { USER: 1, FLUSH: 2, ENGINE_ERROR: 4, GTT_FAULT: 8, VBLANK: 16, IDLE: 32 } as const;

/** vGPU engine error codes (ENGINE_ERROR): the parent's, plus the scanner's verdicts. */
export const VError = {
  NONE: 0,
  REJECTED: 0x100,
  HANG: 0x200,
} as const;

const rejectionCodes: Record<ScanRejection, number> = {
  "unknown-command": 1,
  "privileged-command": 2,
  "register-not-allowed": 3,
  "address-outside-partition": 4,
  "malformed-command": 5,
  "runaway-batch": 6,
  "batch-nesting": 7,
  "gtt-fault": 8,
};

export interface Workload {
  readonly vgpu: Vgpu;
  readonly commands: Uint32Array;
  /** Ring tail this workload completes up to. */
  readonly tail: number;
}

export interface VgpuStats {
  traps: number;
  gttUpdates: number;
  gttRejected: number;
  submissions: number;
  commands: number;
  rejected: number;
  hangs: number;
  interrupts: number;
  busyMs: number;
  scanBytes: number;
}

export class Vgpu {
  readonly pci: PciDevice;
  readonly display: DisplayEngine;
  readonly gm: Partition;
  readonly stats: VgpuStats = {
    traps: 0,
    gttUpdates: 0,
    gttRejected: 0,
    submissions: 0,
    commands: 0,
    rejected: 0,
    hangs: 0,
    interrupts: 0,
    busyMs: 0,
    scanBytes: 0,
  };
  /** Saved general-purpose registers (the engine context). */
  readonly gpr = new Uint32Array(16);
  readonly queue: Workload[] = [];
  private readonly vregs: RegisterFile;
  private readonly guestGtt: { lo: Uint32Array; hi: Uint32Array };
  private readonly scanner: Scanner;
  private readonly log: RateLimitedLog;
  mpt: Mpt | undefined;
  /** Ring tail scanned so far (the head advances as workloads complete). */
  private scannedTail = 0;
  private busy = false;

  constructor(
    readonly id: number,
    readonly uuid: string,
    readonly type: VgpuType,
    readonly gpu: ParentGpu,
    /** Offset of its slice in parent local memory. */
    readonly lmBase: number,
    gmBase: number,
    logger: Logger,
    private readonly onWork: () => void,
  ) {
    this.log = new RateLimitedLog(logger);
    this.gm = { base: gmBase, size: type.graphicsMemory };
    const entries = type.graphicsMemory / PAGE_SIZE;
    this.guestGtt = { lo: new Uint32Array(entries), hi: new Uint32Array(entries) };
    this.scanner = new Scanner(gpu.memory, this.gm);
    this.display = new DisplayEngine({
      maxWidth: type.maxWidth,
      maxHeight: type.maxHeight,
      memorySize: type.localMemory,
    });
    this.vregs = new RegisterFile(
      0x1100,
      [
        { offset: VReg.RING_START - VReg.ENGINE, name: "RING_START", writable: ~(PAGE_SIZE - 1) },
        { offset: VReg.RING_HEAD - VReg.ENGINE, name: "RING_HEAD", writable: 0 },
        {
          offset: VReg.RING_TAIL - VReg.ENGINE,
          name: "RING_TAIL",
          writable: 0xfffffffc,
          write: () => this.tailWritten(),
        },
        { offset: VReg.RING_CTL - VReg.ENGINE, name: "RING_CTL", write: () => this.ringControlWritten() },
        {
          offset: VReg.ENGINE_STATUS - VReg.ENGINE,
          name: "ENGINE_STATUS",
          writable: 0,
          read: () => this.engineStatus(),
        },
        { offset: VReg.ENGINE_ERROR - VReg.ENGINE, name: "ENGINE_ERROR", writable: 0 },
        { offset: VReg.ENGINE_ERROR_ADDR - VReg.ENGINE, name: "ENGINE_ERROR_ADDR", writable: 0 },
        {
          offset: VReg.ENGINE_RESET - VReg.ENGINE,
          name: "ENGINE_RESET",
          write: (v) => v & 1 && this.engineReset(),
        },
        ...Array.from({ length: 16 }, (_, n) => ({
          offset: VReg.GPR0 - VReg.ENGINE + n * 4,
          name: `GPR${n}`,
          read: () => this.gpr[n]!,
          write: (v: number) => void (this.gpr[n] = v),
        })),
        { offset: VReg.ISR - VReg.ENGINE, name: "ISR", writable: 0 },
        { offset: VReg.IMR - VReg.ENGINE, name: "IMR", reset: 0xffffffff },
        { offset: VReg.IIR - VReg.ENGINE, name: "IIR", writable: 0, w1c: 0xffffffff },
        { offset: VReg.IER - VReg.ENGINE, name: "IER" },
      ],
      (offset, write) =>
        this.log.warn({ vgpu: uuid, offset: offset + VReg.ENGINE, write }, "unknown vGPU register"),
    );
    const bar2: RegionHandler = {
      read: (offset, count, out, at) => this.bar2Read(offset, count, out, at),
      write: (offset, count, data, at) => this.bar2Write(offset, count, data, at),
    };
    this.pci = new PciDevice({
      identity: {
        vendorId: BOCHS_VENDOR,
        deviceId: BOCHS_DEVICE,
        classCode: 0x038000,
        revision: 2,
        subsystemVendorId: 0x1af4,
        subsystemId: 0x1100,
      },
      bars: [
        {
          index: 0,
          size: type.localMemory,
          kind: "mem32",
          prefetchable: true,
          memory: { fd: gpu.localMemory.fd, fdOffset: lmBase },
        },
        { index: 2, size: BAR2_SIZE, kind: "mem32", handler: bar2 },
      ],
      intx: true,
      msi: 1,
      vendorCapability: new Uint8Array([0x4d, 0x47, 0x50, 0x56, 1, 0]), // "MGPV", version 1
      onReset: () => this.deviceReset(),
    });
  }

  /** The bytes of its local-memory slice (the host's side of BAR0). */
  get localMemory(): Uint8Array {
    return this.gpu.localMemory.bytes.subarray(this.lmBase, this.lmBase + this.type.localMemory);
  }

  get error(): number {
    return this.vregs.get("ENGINE_ERROR");
  }

  get pending(): boolean {
    return this.queue.length > 0;
  }

  scanout(): Frame {
    return this.display.scanout(this.localMemory);
  }

  screenshotPng(): Buffer {
    return frameToPng(this.scanout());
  }

  /** A virtual interrupt: latch unless masked, inject if enabled. */
  raise(bits: number): void {
    const isr = this.vregs.get("ISR") | bits;
    this.vregs.set("ISR", isr);
    const latched = bits & ~this.vregs.get("IMR");
    if (!latched) return;
    this.vregs.set("IIR", this.vregs.get("IIR") | latched);
    if (latched & this.vregs.get("IER")) {
      this.stats.interrupts++;
      this.mpt?.injectInterrupt(0);
    }
  }

  /** The scheduler finished one of our workloads. */
  completed(w: Workload): void {
    this.vregs.set("RING_HEAD", w.tail);
    if (this.queue.length === 0) this.busy = false;
    this.raise(VIrq.IDLE);
  }

  /** The engine stopped on our workload (fault) or it ran past its budget (hang). */
  failed(code: number, address: number, hang: boolean): void {
    this.queue.length = 0;
    this.busy = false;
    this.vregs.set("ENGINE_ERROR", hang ? VError.HANG : code);
    this.vregs.set("ENGINE_ERROR_ADDR", address);
    this.vregs.set("RING_HEAD", this.scannedTail);
    if (hang) this.stats.hangs++;
    this.raise(VIrq.ENGINE_ERROR | (code === 2 ? VIrq.GTT_FAULT : 0));
  }

  startWorkload(): void {
    this.busy = true;
  }

  // ---- BAR2 ---------------------------------------------------------------

  private bar2Read(offset: number, count: number, out: Uint8Array, at: number): void {
    this.stats.traps++;
    if (offset >= VReg.GTT) return this.gttRead(offset - VReg.GTT, count, out, at);
    let value = 0;
    if (offset >= VReg.DISPI && offset < VReg.DISPI + Dispi.COUNT * 2) {
      const index = (offset - VReg.DISPI) >> 1;
      value = this.display.readDispi(index);
      if (count === 4) value |= this.display.readDispi(index + 1) << 16;
      if (offset & 1) value >>>= 8;
    } else if (offset === VReg.QEXT_SIZE) value = 8;
    else if (offset === VReg.QEXT_BYTEORDER) value = this.display.readByteOrder();
    else if (offset >= VReg.PV_INFO && offset < VReg.PV_INFO + 0x100)
      value = this.pvInfo(offset - VReg.PV_INFO);
    else if (offset >= VReg.ENGINE && offset < VReg.ENGINE + 0x1100)
      return this.vregs.read(offset - VReg.ENGINE, count, out, at);
    for (let i = 0; i < count; i++) out[at + i] = i < 4 ? (value >>> (8 * i)) & 0xff : 0;
  }

  private bar2Write(offset: number, count: number, data: Uint8Array, at: number): void {
    this.stats.traps++;
    if (offset >= VReg.GTT) return this.gttWrite(offset - VReg.GTT, count, data, at);
    let value = 0;
    for (let i = 0; i < Math.min(count, 4); i++) value |= data[at + i]! << (8 * i);
    value >>>= 0;
    if (offset >= VReg.DISPI && offset < VReg.DISPI + Dispi.COUNT * 2) {
      const index = (offset - VReg.DISPI) >> 1;
      this.display.writeDispi(index, value & 0xffff);
      if (count === 4) this.display.writeDispi(index + 1, value >>> 16);
    } else if (offset === VReg.QEXT_BYTEORDER) this.display.writeByteOrder(value);
    else if (offset >= VReg.ENGINE && offset < VReg.ENGINE + 0x1100)
      this.vregs.write(offset - VReg.ENGINE, count, data, at);
    // VGA ioports, EDID and the PV block ignore writes.
  }

  private pvInfo(offset: number): number {
    switch (offset & ~3) {
      case PvInfo.MAGIC:
        return PV_MAGIC;
      case PvInfo.VERSION:
        return 1;
      case PvInfo.LM_BASE_LO:
        return this.lmBase >>> 0;
      case PvInfo.LM_BASE_HI:
        return Math.floor(this.lmBase / 0x100000000);
      case PvInfo.LM_SIZE:
        return this.type.localMemory;
      case PvInfo.GM_BASE:
        return this.gm.base;
      case PvInfo.GM_SIZE:
        return this.gm.size;
      case PvInfo.GTT_OFFSET:
        return VReg.GTT;
      case PvInfo.GTT_ENTRIES:
        return this.guestGtt.lo.length;
      case PvInfo.MAX_WIDTH:
        return this.type.maxWidth;
      case PvInfo.MAX_HEIGHT:
        return this.type.maxHeight;
      default:
        return 0;
    }
  }

  // ---- GTT shadowing --------------------------------------------------------

  private gttRead(offset: number, count: number, out: Uint8Array, at: number): void {
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      const index = o >> 3;
      const word =
        index < this.guestGtt.lo.length ? (o & 4 ? this.guestGtt.hi[index]! : this.guestGtt.lo[index]!) : 0;
      out[at + i] = (word >>> (8 * (o & 3))) & 0xff;
    }
  }

  private gttWrite(offset: number, count: number, data: Uint8Array, at: number): void {
    // Entries change when their low dword is written (8-byte writes update both halves first).
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      const index = o >> 3;
      if (index >= this.guestGtt.lo.length) return;
      const words = o & 4 ? this.guestGtt.hi : this.guestGtt.lo;
      const shift = 8 * (o & 3);
      words[index] = ((words[index]! & ~(0xff << shift)) | (data[at + i]! << shift)) >>> 0;
    }
    const first = offset >> 3;
    const last = (offset + count - 1) >> 3;
    for (let index = first; index <= last && index < this.guestGtt.lo.length; index++)
      this.shadowEntry(index);
  }

  /** Validates a guest entry and writes the parent's: nothing can point outside what the guest owns. */
  private shadowEntry(index: number): void {
    this.stats.gttUpdates++;
    const lo = this.guestGtt.lo[index]!;
    const hi = this.guestGtt.hi[index]!;
    const parentIndex = this.gm.base / PAGE_SIZE + index;
    const g = this.gpu.gtt;
    if (!(lo & GTT_VALID)) {
      g.set(parentIndex, 0, 0);
      return;
    }
    const address = hi * 0x100000000 + ((lo & ~0xfff) >>> 0);
    if (lo & GTT_SYSTEM) {
      // A guest frame: the parent reaches it through the mediator's system memory, tagged with our id.
      if (address >= 2 ** 44) return this.rejectEntry(index, address);
      g.set(
        parentIndex,
        (address & 0xfffff000) | GTT_VALID | GTT_SYSTEM,
        Math.floor(address / 0x100000000) | (this.id << 16),
      );
      return;
    }
    if (address < this.lmBase || address + PAGE_SIZE > this.lmBase + this.type.localMemory)
      return this.rejectEntry(index, address);
    g.set(parentIndex, lo & ~GTT_SYSTEM, hi);
  }

  private rejectEntry(index: number, address: number): void {
    this.stats.gttRejected++;
    this.log.warn(
      { vgpu: this.uuid, index, address: `0x${address.toString(16)}` },
      "GTT entry outside the vGPU's memory refused",
    );
    const parentIndex = this.gm.base / PAGE_SIZE + index;
    this.gpu.gtt.set(parentIndex, 0, 0);
    this.raise(VIrq.GTT_FAULT);
  }

  // ---- engine virtualization ----------------------------------------------

  private get ringSize(): number {
    return (((this.vregs.get("RING_CTL") >>> 12) & 0x1ff) + 1) * PAGE_SIZE;
  }

  private ringControlWritten(): void {
    // Enabling a ring (re)starts it empty at head 0.
    this.vregs.set("RING_HEAD", 0);
    this.scannedTail = 0;
  }

  private tailWritten(): void {
    if (!(this.vregs.get("RING_CTL") & 1)) return;
    const tail = this.vregs.get("RING_TAIL") % this.ringSize;
    if (this.vregs.get("ENGINE_ERROR") !== VError.NONE) return; // stopped until the guest resets the engine
    if (tail === this.scannedTail) return;
    const start = this.vregs.get("RING_START");
    try {
      const result = this.scanner.scanRing(start, this.ringSize, this.scannedTail, tail);
      this.stats.scanBytes += result.bytesScanned;
      this.stats.commands += result.count;
      this.stats.submissions++;
      this.scannedTail = tail;
      this.queue.push({ vgpu: this, commands: result.commands, tail });
      this.busy = true;
      this.onWork();
    } catch (e) {
      if (!(e instanceof ScanError)) throw e;
      this.stats.rejected++;
      this.mpt?.release?.();
      this.scannedTail = tail;
      this.log.warn(
        { vgpu: this.uuid, reason: e.reason, address: `0x${e.address.toString(16)}` },
        "command stream rejected",
      );
      this.failed(VError.REJECTED | rejectionCodes[e.reason], e.address, false);
    }
  }

  private engineStatus(): number {
    const error = this.vregs.get("ENGINE_ERROR") !== VError.NONE;
    const idle = error || (!this.busy && this.vregs.get("RING_HEAD") === this.scannedTail);
    return (idle ? 1 : 0) | (error ? 2 : 0);
  }

  private engineReset(): void {
    this.queue.length = 0;
    this.busy = false;
    this.vregs.set("ENGINE_ERROR", 0);
    this.vregs.set("ENGINE_ERROR_ADDR", 0);
    this.scannedTail = this.vregs.get("RING_TAIL") % this.ringSize;
    this.vregs.set("RING_HEAD", this.scannedTail);
    this.gpr.fill(0);
  }

  /** Function reset (DEVICE_RESET, FLR): registers, display, GTT partition back to power-on. */
  private deviceReset(): void {
    this.vregs.reset();
    this.display.reset();
    this.queue.length = 0;
    this.busy = false;
    this.scannedTail = 0;
    this.gpr.fill(0);
    this.guestGtt.lo.fill(0);
    this.guestGtt.hi.fill(0);
    this.gpu.gtt.clear(this.gm.base / PAGE_SIZE, this.guestGtt.lo.length);
  }

  /** Releases the partition in the parent's GTT (the vGPU is being removed). */
  destroy(): void {
    this.gpu.gtt.clear(this.gm.base / PAGE_SIZE, this.guestGtt.lo.length);
  }
}
