/**
 * A simulated VM: guest RAM in a memfd, a physical address map (RAM, then the
 * BAR windows its guest driver assigns), and one vGPU attached through the
 * project's vfio-user client. A vCPU access to RAM or to a pass-through BAR
 * goes straight to memory; an access to a trapped BAR becomes a vfio-user
 * REGION_READ/WRITE to the device's server. Interrupts arrive on eventfds.
 *
 * Memory model, per VM:
 * - "kvm": guest RAM is shared with the device by fd (DMA_MAP with the memfd);
 *   the device model maps it once and reaches any frame directly.
 * - "xen": the device model gets no mapping up front (DMA_MAP without fd); it
 *   must map each guest frame explicitly before touching it (here: fetched
 *   with DMA_READ, written back with DMA_WRITE), as Xen device models map
 *   foreign frames through hypercalls.
 */
import { Mapping, closeFd, createMemfd } from "../../sys/index.js";
import type { PciBus } from "../../guest/bus.js";
import { Client, DMA_FLAG_READ, DMA_FLAG_WRITE, type Logger, PciRegion } from "../../vfio-user/index.js";
import { ClientBus } from "../client-bus.js";

export type MemoryModel = "kvm" | "xen";

export interface SimVmOptions {
  readonly name: string;
  /** Guest RAM bytes (a multiple of 4 KiB). */
  readonly ramSize: number;
  readonly memoryModel: MemoryModel;
  /** The vGPU's vfio-user socket. */
  readonly socket: string;
  readonly logger?: Logger;
}

interface Window {
  readonly base: number;
  readonly size: number;
  readonly bar: number;
  /** Set when the BAR is passed through (mapped), else accesses trap. */
  readonly memory: Uint8Array | undefined;
}

/** Where guest RAM sits in the device's DMA address space (identity: GPA == IOVA). */
export const RAM_BASE = 0;

export class SimVm implements PciBus {
  readonly ramFd: number;
  readonly ram: Mapping;
  readonly client: Client;
  private readonly device: ClientBus;
  private windows: Window[] = [];
  /** vCPU accesses by kind, for the demo's table. */
  readonly accesses = { ram: 0, passThrough: 0, trapped: 0 };

  constructor(readonly options: SimVmOptions) {
    this.ramFd = createMemfd(`vm-${options.name}-ram`, options.ramSize);
    this.ram = Mapping.ofFd(this.ramFd, options.ramSize);
    const ram = this.ram.bytes;
    this.client = Client.connect(options.socket, {
      ...(options.logger ? { logger: options.logger } : {}),
      // Many VMs share two cores here: a reply may wait on a busy host longer than QEMU's 5 s.
      timeoutMs: 30_000,
      // DMA_READ/DMA_WRITE from the device land in guest RAM (the xen model's only path).
      memory: {
        read: (address, out) =>
          out.set(ram.subarray(Number(address) - RAM_BASE, Number(address) - RAM_BASE + out.length)),
        write: (address, data) => ram.set(data, Number(address) - RAM_BASE),
      },
    });
    this.client.dmaMap(
      {
        flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
        offset: 0n,
        address: BigInt(RAM_BASE),
        size: BigInt(options.ramSize),
      },
      options.memoryModel === "kvm" ? this.ramFd : undefined,
    );
    this.device = new ClientBus(this.client);
  }

  // ---- the guest's PciBus ---------------------------------------------------

  configRead(offset: number, size: 1 | 2 | 4): number {
    return this.device.configRead(offset, size);
  }

  /** Config writes pass through; BAR writes also place the window in the physical map. */
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.device.configWrite(offset, size, value);
    if (size === 4 && offset >= 0x10 && offset < 0x28 && value !== 0xffffffff)
      this.placeBar((offset - 0x10) / 4, value >>> 0);
  }

  mmioRead(bar: number, offset: number, size: 1 | 2 | 4): number {
    return this.physRead(this.barBase(bar) + offset, size);
  }

  mmioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.physWrite(this.barBase(bar) + offset, size, value);
  }

  barMemory(bar: number): Uint8Array | undefined {
    return this.windows.find((w) => w.bar === bar)?.memory;
  }

  waitInterrupt(timeoutMs: number): boolean {
    return this.device.waitInterrupt(timeoutMs);
  }

  /** The guest's own RAM from `gpa` (what its driver writes with plain stores). */
  ramAt(gpa: number, length: number): Uint8Array {
    if (gpa < RAM_BASE || gpa + length > RAM_BASE + this.options.ramSize)
      throw new RangeError("outside guest RAM");
    return this.ram.bytes.subarray(gpa - RAM_BASE, gpa - RAM_BASE + length);
  }

  // ---- the vCPU's view of physical memory ----------------------------------

  physRead(gpa: number, size: 1 | 2 | 4): number {
    const hit = this.route(gpa, size);
    if (hit.kind === "trap") {
      this.accesses.trapped++;
      return this.device.mmioRead(hit.bar, hit.offset, size);
    }
    this.accesses[hit.kind]++;
    const v = new DataView(hit.bytes.buffer, hit.bytes.byteOffset + hit.offset, size);
    return size === 1 ? v.getUint8(0) : size === 2 ? v.getUint16(0, true) : v.getUint32(0, true);
  }

  physWrite(gpa: number, size: 1 | 2 | 4, value: number): void {
    const hit = this.route(gpa, size);
    if (hit.kind === "trap") {
      this.accesses.trapped++;
      this.device.mmioWrite(hit.bar, hit.offset, size, value);
      return;
    }
    this.accesses[hit.kind]++;
    const v = new DataView(hit.bytes.buffer, hit.bytes.byteOffset + hit.offset, size);
    if (size === 1) v.setUint8(0, value);
    else if (size === 2) v.setUint16(0, value, true);
    else v.setUint32(0, value >>> 0, true);
  }

  close(): void {
    this.device.close();
    this.client.close();
    this.ram.unmap();
    closeFd(this.ramFd);
  }

  private route(
    gpa: number,
    size: number,
  ):
    | { kind: "ram" | "passThrough"; bytes: Uint8Array; offset: number }
    | { kind: "trap"; bar: number; offset: number } {
    if (gpa >= RAM_BASE && gpa + size <= RAM_BASE + this.options.ramSize)
      return { kind: "ram", bytes: this.ram.bytes, offset: gpa - RAM_BASE };
    for (const w of this.windows) {
      if (gpa >= w.base && gpa + size <= w.base + w.size) {
        if (w.memory) return { kind: "passThrough", bytes: w.memory, offset: gpa - w.base };
        return { kind: "trap", bar: w.bar, offset: gpa - w.base };
      }
    }
    throw new RangeError(`no memory or device at guest physical 0x${gpa.toString(16)}`);
  }

  private barBase(bar: number): number {
    const w = this.windows.find((x) => x.bar === bar);
    if (!w) throw new RangeError(`BAR${bar} has no address yet`);
    return w.base;
  }

  /** The guest programmed a BAR: map it where it said (mmap areas pass through, the rest traps). */
  private placeBar(bar: number, value: number): void {
    if (bar > PciRegion.BAR5) return;
    const info = this.client.getRegionInfo(bar);
    let memory: Uint8Array | undefined;
    if (info.fd !== undefined) {
      const whole =
        info.sparseMmap?.length === 1 &&
        info.sparseMmap[0]!.offset === 0 &&
        info.sparseMmap[0]!.size === info.size;
      if (whole) memory = this.device.barMemory(bar);
      closeFd(info.fd);
    }
    const base = (value & ~0xf) >>> 0;
    this.windows = [...this.windows.filter((w) => w.bar !== bar), { base, size: info.size, bar, memory }];
  }
}
