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
  Bar2,
  BAR2_ENGINE_BLOCK_SIZE,
  BAR2_SIZE,
  ENGINE_RESET_BIT,
  GTT_ADDRESS_MASK,
  GTT_SYSTEM_ADDRESS_LIMIT,
  Dispi,
  EngineError,
  GTT_SYSTEM,
  GTT_VALID,
  Irq,
  PAGE_SIZE,
  PV_INFO_SIZE,
  PV_MAGIC,
  PV_VERSION,
  PciIdentity,
  PvInfo,
  QEXT_BLOCK_SIZE,
  RING_OFFSET_MASK,
  RingCtl,
  ScanRejectionCode,
  VENDOR_CAPABILITY,
  VgpuBar,
} from "../abi/index.js";
import { DisplayEngine, type Frame, type ParentGpu, frameToPng } from "../gpu/index.js";
import type { Mpt } from "../hypervisor/mpt.js";
import { PciDevice, RegisterFile, type RegionHandler } from "../pci/index.js";
import { type Logger, RateLimitedLog } from "../base/index.js";
import { type Partition, ScanError, Scanner } from "./scanner.js";
import type { VgpuType } from "./types.js";

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
      BAR2_ENGINE_BLOCK_SIZE,
      [
        { offset: Bar2.RING_START - Bar2.ENGINE, name: "RING_START", writable: ~(PAGE_SIZE - 1) },
        { offset: Bar2.RING_HEAD - Bar2.ENGINE, name: "RING_HEAD", writable: 0 },
        {
          offset: Bar2.RING_TAIL - Bar2.ENGINE,
          name: "RING_TAIL",
          writable: RING_OFFSET_MASK,
          write: () => this.tailWritten(),
        },
        { offset: Bar2.RING_CTL - Bar2.ENGINE, name: "RING_CTL", write: () => this.ringControlWritten() },
        {
          offset: Bar2.ENGINE_STATUS - Bar2.ENGINE,
          name: "ENGINE_STATUS",
          writable: 0,
          read: () => this.engineStatus(),
        },
        { offset: Bar2.ENGINE_ERROR - Bar2.ENGINE, name: "ENGINE_ERROR", writable: 0 },
        { offset: Bar2.ENGINE_ERROR_ADDR - Bar2.ENGINE, name: "ENGINE_ERROR_ADDR", writable: 0 },
        {
          offset: Bar2.ENGINE_RESET - Bar2.ENGINE,
          name: "ENGINE_RESET",
          write: (v) => v & ENGINE_RESET_BIT && this.engineReset(),
        },
        ...Array.from({ length: 16 }, (_, n) => ({
          offset: Bar2.GPR0 - Bar2.ENGINE + n * 4,
          name: `GPR${n}`,
          read: () => this.gpr[n]!,
          write: (v: number) => void (this.gpr[n] = v),
        })),
        { offset: Bar2.ISR - Bar2.ENGINE, name: "ISR", writable: 0 },
        { offset: Bar2.IMR - Bar2.ENGINE, name: "IMR", reset: 0xffffffff },
        { offset: Bar2.IIR - Bar2.ENGINE, name: "IIR", writable: 0, w1c: 0xffffffff },
        { offset: Bar2.IER - Bar2.ENGINE, name: "IER" },
      ],
      (offset, write) =>
        this.log.warn({ vgpu: uuid, offset: offset + Bar2.ENGINE, write }, "unknown vGPU register"),
    );
    const bar2: RegionHandler = {
      read: (offset, count, out, at) => this.bar2Read(offset, count, out, at),
      write: (offset, count, data, at) => this.bar2Write(offset, count, data, at),
    };
    this.pci = new PciDevice({
      identity: {
        vendorId: PciIdentity.VENDOR_ID,
        deviceId: PciIdentity.DEVICE_ID,
        classCode: PciIdentity.CLASS_CODE,
        revision: PciIdentity.REVISION,
        subsystemVendorId: PciIdentity.SUBSYSTEM_VENDOR_ID,
        subsystemId: PciIdentity.SUBSYSTEM_ID,
      },
      bars: [
        {
          index: VgpuBar.LOCAL_MEMORY,
          size: type.localMemory,
          kind: "mem32",
          prefetchable: true,
          memory: { fd: gpu.localMemory.fd, fdOffset: lmBase },
        },
        { index: VgpuBar.MMIO, size: BAR2_SIZE, kind: "mem32", handler: bar2 },
      ],
      intx: true,
      msi: 1,
      vendorCapability: VENDOR_CAPABILITY,
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
    this.raise(Irq.IDLE);
  }

  /** The engine stopped on our workload (fault) or it ran past its budget (hang). */
  failed(code: number, address: number, hang: boolean): void {
    this.queue.length = 0;
    this.busy = false;
    this.vregs.set("ENGINE_ERROR", hang ? EngineError.HANG : code);
    this.vregs.set("ENGINE_ERROR_ADDR", address);
    this.vregs.set("RING_HEAD", this.scannedTail);
    if (hang) this.stats.hangs++;
    this.raise(Irq.ENGINE_ERROR | (code === EngineError.GTT_FAULT ? Irq.GTT_FAULT : 0));
  }

  startWorkload(): void {
    this.busy = true;
  }

  // ---- BAR2 ---------------------------------------------------------------

  private bar2Read(offset: number, count: number, out: Uint8Array, at: number): void {
    this.stats.traps++;
    if (offset >= Bar2.GTT) return this.gttRead(offset - Bar2.GTT, count, out, at);
    let value = 0;
    if (offset >= Bar2.DISPI && offset < Bar2.DISPI + Dispi.COUNT * 2) {
      const index = (offset - Bar2.DISPI) >> 1;
      value = this.display.readDispi(index);
      if (count === 4) value |= this.display.readDispi(index + 1) << 16;
      if (offset & 1) value >>>= 8;
    } else if (offset === Bar2.QEXT_SIZE) value = QEXT_BLOCK_SIZE;
    else if (offset === Bar2.QEXT_BYTEORDER) value = this.display.readByteOrder();
    else if (offset >= Bar2.PV_INFO && offset < Bar2.PV_INFO + PV_INFO_SIZE)
      value = this.pvInfo(offset - Bar2.PV_INFO);
    else if (offset >= Bar2.ENGINE && offset < Bar2.ENGINE + BAR2_ENGINE_BLOCK_SIZE)
      return this.vregs.read(offset - Bar2.ENGINE, count, out, at);
    for (let i = 0; i < count; i++) out[at + i] = i < 4 ? (value >>> (8 * i)) & 0xff : 0;
  }

  private bar2Write(offset: number, count: number, data: Uint8Array, at: number): void {
    this.stats.traps++;
    if (offset >= Bar2.GTT) return this.gttWrite(offset - Bar2.GTT, count, data, at);
    let value = 0;
    for (let i = 0; i < Math.min(count, 4); i++) value |= data[at + i]! << (8 * i);
    value >>>= 0;
    if (offset >= Bar2.DISPI && offset < Bar2.DISPI + Dispi.COUNT * 2) {
      const index = (offset - Bar2.DISPI) >> 1;
      this.display.writeDispi(index, value & 0xffff);
      if (count === 4) this.display.writeDispi(index + 1, value >>> 16);
    } else if (offset === Bar2.QEXT_BYTEORDER) this.display.writeByteOrder(value);
    else if (offset >= Bar2.ENGINE && offset < Bar2.ENGINE + BAR2_ENGINE_BLOCK_SIZE)
      this.vregs.write(offset - Bar2.ENGINE, count, data, at);
    // VGA ioports, EDID and the PV block ignore writes.
  }

  private pvInfo(offset: number): number {
    switch (offset & ~3) {
      case PvInfo.MAGIC:
        return PV_MAGIC;
      case PvInfo.VERSION:
        return PV_VERSION;
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
        return Bar2.GTT;
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
    const address = hi * 0x100000000 + ((lo & GTT_ADDRESS_MASK) >>> 0);
    if (lo & GTT_SYSTEM) {
      // A guest frame: the parent reaches it through the mediator's system memory, tagged with our id.
      if (address >= GTT_SYSTEM_ADDRESS_LIMIT) return this.rejectEntry(index, address);
      g.set(
        parentIndex,
        (address & GTT_ADDRESS_MASK) | GTT_VALID | GTT_SYSTEM,
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
    this.raise(Irq.GTT_FAULT);
  }

  // ---- engine virtualization ----------------------------------------------

  private get ringSize(): number {
    return RingCtl.lengthPages(this.vregs.get("RING_CTL")) * PAGE_SIZE;
  }

  private ringControlWritten(): void {
    // Enabling a ring (re)starts it empty at head 0.
    this.vregs.set("RING_HEAD", 0);
    this.scannedTail = 0;
  }

  private tailWritten(): void {
    if (!(this.vregs.get("RING_CTL") & RingCtl.ENABLE)) return;
    const tail = this.vregs.get("RING_TAIL") % this.ringSize;
    if (this.vregs.get("ENGINE_ERROR") !== EngineError.NONE) return; // stopped until the guest resets the engine
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
      this.failed(EngineError.REJECTED | ScanRejectionCode[e.reason], e.address, false);
    }
  }

  private engineStatus(): number {
    const error = this.vregs.get("ENGINE_ERROR") !== EngineError.NONE;
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
