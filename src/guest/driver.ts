/**
 * A driver for the vGPU written the way a guest kernel would write it: find the
 * device through config space, place its BARs, read the paravirtual info block
 * to learn its partition, program its GTT, set a mode through DISPI, submit
 * command streams through a ring and batch buffers, and wait for interrupts.
 * It documents the device for real-guest drivers, and runs in tests and in the
 * simulated VMs over a PciBus.
 */
import {
  Bar2,
  Dispi,
  DispiEnable,
  ENGINE_RESET_BIT,
  GTT_ENTRY_BYTES,
  EngineStatus,
  Irq,
  MI_BATCH_BUFFER_END,
  MI_USER_INTERRUPT,
  PAGE_SIZE,
  PV_MAGIC,
  PciIdentity,
  PvInfo,
  RingCtl,
  type Surface,
  VgpuBar,
  type Workload,
  encodeOps,
  gttDwords,
  miBatchBufferStart,
} from "../abi/index.js";
import { MgpuError } from "../base/index.js";
import type { PciBus } from "./bus.js";

const MMIO = VgpuBar.MMIO;
// The PCI header fields a driver touches (PCI Local Bus spec, type-0 header).
const PCI_COMMAND = 0x04;
const COMMAND_MEMORY_MASTER = 0x0006;
const barRegister = (bar: number) => 0x10 + bar * 4;
/** IIR is write-1-to-clear: acknowledge everything latched. */
const ALL_INTERRUPTS = 0xffffffff;

const Guest = {
  /** A command stream `times` over, in one array. */
  repeat(once: readonly number[], times: number): number[] {
    const all = new Array<number>(once.length * times);
    for (let i = 0; i < times; i++) for (let j = 0; j < once.length; j++) all[i * once.length + j] = once[j]!;
    return all;
  },
};

export class GuestDriverError extends MgpuError<"ENODEV" | "ENOSPC" | "EIO" | "ETIMEDOUT"> {}

export interface Partition {
  readonly lmSize: number;
  readonly gmBase: number;
  readonly gmSize: number;
  readonly lmBase: number;
  readonly gttOffset: number;
  readonly maxWidth: number;
  readonly maxHeight: number;
}

export class GuestDriver {
  partition!: Partition;
  private next = 0;
  private ringGma = 0;
  private readonly ringBytes = 64 << 10;
  private tail = 0;
  private batchGma = 0;
  private readonly batchBytes = 4 << 20;
  private fb: Uint8Array | undefined;
  interrupts = 0;

  constructor(private readonly bus: PciBus) {}

  /** Guest RAM holding the batch buffer, when the driver keeps batches in system memory. */
  private systemBatch: { gpa: number; bytes: Uint8Array } | undefined;

  /**
   * Probes and brings the device up. `barBase` is where this guest places
   * BAR0/BAR2. With `systemBatch`, batch buffers live in guest RAM (mapped
   * into the GTT as system pages, as integrated GPUs do) instead of in BAR0.
   */
  init(barBase = 0xe0000000, options: { systemBatch?: { gpa: number; bytes: Uint8Array } } = {}): void {
    const b = this.bus;
    const id = b.configRead(0, 4);
    if (id !== ((PciIdentity.DEVICE_ID << 16) | PciIdentity.VENDOR_ID) >>> 0)
      throw new GuestDriverError("ENODEV", `not a vGPU: ${id.toString(16)}`);
    // Place the BARs (sizes come from the all-ones probe), then decode memory and master.
    const size = (bar: number) => {
      const at = barRegister(bar);
      b.configWrite(at, 4, 0xffffffff);
      const mask = b.configRead(at, 4) & ~0xf;
      return (~mask + 1) >>> 0;
    };
    const bar0 = size(VgpuBar.LOCAL_MEMORY);
    const bar2 = size(VgpuBar.MMIO);
    b.configWrite(barRegister(VgpuBar.LOCAL_MEMORY), 4, barBase);
    b.configWrite(barRegister(VgpuBar.MMIO), 4, barBase + bar0);
    if (bar2 === 0) throw new GuestDriverError("ENODEV", "no MMIO BAR");
    b.configWrite(PCI_COMMAND, 2, COMMAND_MEMORY_MASTER);
    if (b.mmioRead(MMIO, Bar2.PV_INFO + PvInfo.MAGIC, 4) !== PV_MAGIC)
      throw new GuestDriverError("ENODEV", "no paravirtual info block");
    const pv = (o: number) => b.mmioRead(MMIO, Bar2.PV_INFO + o, 4);
    this.partition = {
      lmBase: pv(PvInfo.LM_BASE_LO) + pv(PvInfo.LM_BASE_HI) * 0x100000000,
      lmSize: pv(PvInfo.LM_SIZE),
      gmBase: pv(PvInfo.GM_BASE),
      gmSize: pv(PvInfo.GM_SIZE),
      gttOffset: pv(PvInfo.GTT_OFFSET),
      maxWidth: pv(PvInfo.MAX_WIDTH),
      maxHeight: pv(PvInfo.MAX_HEIGHT),
    };
    if (bar0 !== this.partition.lmSize)
      throw new GuestDriverError("ENODEV", "BAR0 does not match the PV block");
    this.fb = b.barMemory(VgpuBar.LOCAL_MEMORY);
    this.next = 0;
    this.mapped = 0;
    this.ringGma = this.alloc(this.ringBytes);
    this.systemBatch = options.systemBatch;
    if (this.systemBatch) {
      if (this.systemBatch.bytes.length < this.batchBytes)
        throw new GuestDriverError("ENOSPC", "system batch area too small");
      // The partition's upper half (beyond local memory) maps guest RAM pages.
      const first = this.partition.lmSize / PAGE_SIZE;
      if ((first + this.batchBytes / PAGE_SIZE) * PAGE_SIZE > this.partition.gmSize)
        throw new GuestDriverError("ENOSPC", "no graphics memory left for a system batch");
      for (let i = 0; i < this.batchBytes / PAGE_SIZE; i++)
        this.writeGtt(first + i, this.systemBatch.gpa + i * PAGE_SIZE, true);
      this.batchGma = this.partition.gmBase + this.partition.lmSize;
    } else {
      this.batchGma = this.alloc(this.batchBytes);
    }
    b.mmioWrite(MMIO, Bar2.RING_CTL, 4, 0);
    b.mmioWrite(MMIO, Bar2.RING_START, 4, this.ringGma);
    b.mmioWrite(MMIO, Bar2.RING_CTL, 4, RingCtl.encode(this.ringBytes / PAGE_SIZE));
    this.tail = 0;
    b.mmioWrite(MMIO, Bar2.IMR, 4, 0);
    b.mmioWrite(MMIO, Bar2.IER, 4, Irq.USER | Irq.ENGINE_ERROR | Irq.IDLE);
  }

  /** GTT pages mapped so far: GMA base+x ↔ local memory lmBase+x (BAR0 offset x), as allocations need them. */
  private mapped = 0;
  private mapLocalMemory(upTo: number): void {
    const p = this.partition;
    for (; this.mapped < upTo; this.mapped += PAGE_SIZE)
      this.writeGtt(this.mapped / PAGE_SIZE, p.lmBase + this.mapped, false);
  }

  writeGtt(index: number, address: number, system: boolean): void {
    // High dword first: the entry takes effect when its low dword is written.
    const { lo, hi } = gttDwords(system ? "system" : "local", address);
    this.bus.mmioWrite(MMIO, this.partition.gttOffset + index * GTT_ENTRY_BYTES + 4, 4, hi);
    this.bus.mmioWrite(MMIO, this.partition.gttOffset + index * GTT_ENTRY_BYTES, 4, lo);
  }

  /** Graphics memory inside our mapped local memory; returns its GMA. Offset 0 is the scan-out surface's. */
  alloc(bytes: number): number {
    const size = Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    if (this.next + size > Math.min(this.partition.lmSize, this.partition.gmSize))
      throw new GuestDriverError("ENOSPC", "out of graphics memory");
    const gma = this.partition.gmBase + this.next;
    this.next += size;
    this.mapLocalMemory(this.next);
    return gma;
  }

  allocSurface(width: number, height: number): Surface {
    return { gma: this.alloc(width * height * 4), width, height, pitch: width * 4 };
  }

  /** Writes bytes at a GMA of ours: straight into BAR0 when mapped, else through trapped writes. */
  private writeMemory(gma: number, words: ArrayLike<number>): void {
    const sys = this.systemBatch;
    if (sys && gma >= this.batchGma && gma < this.batchGma + this.batchBytes) {
      new Uint32Array(sys.bytes.buffer, sys.bytes.byteOffset + (gma - this.batchGma), words.length).set(
        words,
      );
      return;
    }
    const offset = gma - this.partition.gmBase;
    if (this.fb) {
      const v = new Uint32Array(this.fb.buffer, this.fb.byteOffset + offset, words.length);
      v.set(words);
    } else
      for (let i = 0; i < words.length; i++)
        this.bus.mmioWrite(VgpuBar.LOCAL_MEMORY, offset + i * 4, 4, words[i]!);
  }

  /** Puts dwords in the ring and moves the tail (the one trapped write of a submission). */
  submit(dwords: readonly number[]): void {
    if (dwords.length * 4 >= this.ringBytes)
      throw new GuestDriverError("ENOSPC", "command stream larger than the ring");
    const first = Math.min(dwords.length, (this.ringBytes - this.tail) / 4);
    this.writeMemory(this.ringGma + this.tail, dwords.slice(0, first));
    if (first < dwords.length) this.writeMemory(this.ringGma, dwords.slice(first));
    this.tail = (this.tail + dwords.length * 4) % this.ringBytes;
    this.bus.mmioWrite(MMIO, Bar2.RING_TAIL, 4, this.tail);
  }

  /** Frames in flight: which batch slot each used and the ring tail that completes it. */
  private readonly inFlight: { slot: number; tail: number }[] = [];
  private nextSlot = 0;
  /** Batch slots for pipelined submission (the batch area split in `slots` parts). */
  slots = 3;
  /** Enqueued frames the device has finished. */
  completed = 0;

  /**
   * Pipelined submission: puts a stream in the next batch slot and starts it
   * without waiting, so up to `slots` frames are queued on the device; waits
   * only when the slot is still in use by an earlier frame.
   */
  enqueue(dwords: ArrayLike<number>, timeoutMs = 10_000): void {
    const slotBytes = Math.floor(this.batchBytes / this.slots / PAGE_SIZE) * PAGE_SIZE;
    if ((dwords.length + 1) * 4 > slotBytes)
      throw new GuestDriverError("ENOSPC", "frame larger than a batch slot");
    const slot = this.nextSlot;
    this.nextSlot = (this.nextSlot + 1) % this.slots;
    while (this.inFlight.some((f) => f.slot === slot)) this.reap(timeoutMs);
    const gma = this.batchGma + slot * slotBytes;
    this.writeMemory(gma, dwords);
    this.writeMemory(gma + dwords.length * 4, [MI_BATCH_BUFFER_END]);
    this.submit([...miBatchBufferStart(gma), MI_USER_INTERRUPT]);
    this.inFlight.push({ slot, tail: this.tail });
  }

  /** Waits for every enqueued frame. */
  drain(timeoutMs = 10_000): void {
    while (this.inFlight.length > 0) this.reap(timeoutMs);
  }

  /** Retires frames whose ring tail the (in-order) head has reached; waits for one if none has. */
  private reap(timeoutMs: number): void {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = this.bus.mmioRead(MMIO, Bar2.ENGINE_STATUS, 4);
      if (status & EngineStatus.ERROR) {
        this.inFlight.length = 0;
        throw new GuestDriverError(
          "EIO",
          `engine error 0x${this.bus.mmioRead(MMIO, Bar2.ENGINE_ERROR, 4).toString(16)}`,
        );
      }
      const head = this.bus.mmioRead(MMIO, Bar2.RING_HEAD, 4);
      const done = this.inFlight.findIndex((f) => f.tail === head);
      if (done >= 0) {
        this.inFlight.splice(0, done + 1);
        this.completed += done + 1;
        return;
      }
      if (Date.now() > deadline) throw new GuestDriverError("ETIMEDOUT", "frames did not complete");
      if (this.bus.waitInterrupt(Math.max(1, deadline - Date.now()))) {
        this.interrupts++;
        this.bus.mmioWrite(MMIO, Bar2.IIR, 4, ALL_INTERRUPTS);
      }
    }
  }

  /** Runs a command stream from a batch buffer and waits for it to finish. */
  execute(dwords: ArrayLike<number>, timeoutMs = 10_000): void {
    if ((dwords.length + 1) * 4 > this.batchBytes) throw new GuestDriverError("ENOSPC", "batch too large");
    this.drain(timeoutMs);
    this.writeMemory(this.batchGma, dwords);
    this.writeMemory(this.batchGma + dwords.length * 4, [MI_BATCH_BUFFER_END]);
    this.submit([...miBatchBufferStart(this.batchGma), MI_USER_INTERRUPT]);
    this.wait(timeoutMs);
  }

  /** Waits until the engine is idle with our ring consumed; throws on a device error. */
  wait(timeoutMs = 10_000): void {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = this.bus.mmioRead(MMIO, Bar2.ENGINE_STATUS, 4);
      if (status & EngineStatus.ERROR) {
        const error = this.bus.mmioRead(MMIO, Bar2.ENGINE_ERROR, 4);
        throw new GuestDriverError("EIO", `engine error 0x${error.toString(16)}`);
      }
      if (status & EngineStatus.IDLE && this.bus.mmioRead(MMIO, Bar2.RING_HEAD, 4) === this.tail) {
        // Acknowledge the completion interrupt that came with it.
        if (this.bus.waitInterrupt(0)) this.interrupts++;
        this.bus.mmioWrite(MMIO, Bar2.IIR, 4, ALL_INTERRUPTS);
        break;
      }
      if (Date.now() > deadline) throw new GuestDriverError("ETIMEDOUT", "engine did not finish");
      if (this.bus.waitInterrupt(Math.max(1, deadline - Date.now()))) {
        this.interrupts++;
        this.bus.mmioWrite(MMIO, Bar2.IIR, 4, ALL_INTERRUPTS);
      }
    }
  }

  /** After an error: reset our (virtual) engine and start the ring over. */
  recover(): void {
    this.inFlight.length = 0;
    this.bus.mmioWrite(MMIO, Bar2.ENGINE_RESET, 4, ENGINE_RESET_BIT);
    this.bus.mmioWrite(MMIO, Bar2.IIR, 4, ALL_INTERRUPTS);
    this.tail = this.bus.mmioRead(MMIO, Bar2.RING_TAIL, 4);
  }

  /** Allocates a workload's surfaces (the output at the scan-out position) and runs its setup. */
  prepare(w: Workload, scanout = false): Record<string, Surface> {
    const surfaces: Record<string, Surface> = {};
    for (const [name, s] of Object.entries(w.surfaces)) {
      surfaces[name] =
        scanout && name === w.output
          ? this.scanoutSurface(s.width, s.height)
          : this.allocSurface(s.width, s.height);
    }
    if (w.setup.length > 0) this.execute(encodeOps(w.setup, surfaces));
    return surfaces;
  }

  run(w: Workload, surfaces: Record<string, Surface>, repeat = 1): void {
    this.execute(Guest.repeat(encodeOps(w.ops, surfaces), repeat));
  }

  /** The surface the display scans out: BAR0 offset 0 (as the Bochs framebuffer). */
  private scanoutHeight = 1;
  private scanoutSurface(width: number, height: number): Surface {
    this.scanoutHeight = height;
    // The ring and batch were allocated first; the frame goes right after them unless asked at 0.
    return {
      gma: this.partition.gmBase + this.reserveScanout(width * height * 4),
      width,
      height,
      pitch: width * 4,
    };
  }

  private scanoutOffset = -1;
  private reserveScanout(bytes: number): number {
    if (this.scanoutOffset < 0) {
      // The display scrolls by whole lines: start the surface on a line boundary.
      const pitch = bytes / Math.max(1, this.scanoutHeight);
      while (this.next % pitch !== 0) this.next += PAGE_SIZE;
      this.scanoutOffset = this.alloc(bytes) - this.partition.gmBase;
    }
    return this.scanoutOffset;
  }

  /** Mode set through DISPI: 32 bpp; the visible image starts at the scan-out surface. */
  modeSet(surface: Surface): void {
    const dispi = (i: number, v: number) => this.bus.mmioWrite(MMIO, Bar2.DISPI + i * 2, 2, v);
    const offset = surface.gma - this.partition.gmBase;
    dispi(Dispi.ENABLE, 0);
    dispi(Dispi.BPP, 32);
    dispi(Dispi.XRES, surface.width);
    dispi(Dispi.YRES, surface.height);
    dispi(Dispi.ENABLE, DispiEnable.ENABLED | DispiEnable.LFB);
    dispi(Dispi.VIRT_WIDTH, surface.width);
    // The Bochs model has no base register: scroll with Y_OFFSET to where the surface starts.
    if (offset % surface.pitch !== 0)
      throw new GuestDriverError("EIO", "scan-out surface not on a line boundary");
    dispi(Dispi.Y_OFFSET, offset / surface.pitch);
  }
}
