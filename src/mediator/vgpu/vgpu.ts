/**
 * A vGPU: one PCI function that a stock guest sees as a Bochs display
 * (1234:1111, so the bochs DRM driver binds), assembled from its concerns:
 * - BAR0: its slice of the parent's local memory, an mmap area — never trapped;
 *   the fd behind it is that slice's own sealed memfd, nothing else;
 * - BAR2: MMIO, every access trapped, a map of register blocks (`Bar2Block`):
 *   the Bochs display's (display.ts), the PV info block (pv-info.ts), the
 *   virtual engine (engine.ts) and interrupts (irq.ts), and its GTT partition
 *   (gtt-shadow.ts);
 * - reset: DEVICE_RESET and FLR return all of them to power-on.
 */
import { BAR2_SIZE, Bar2Block, Irq, PciIdentity, VENDOR_CAPABILITY, VgpuBar } from "../../abi/index.js";
import { type Logger, RateLimitedLog } from "../../base/index.js";
import { DisplayEngine, type Frame, type ParentGpu, frameToPng } from "../../gpu/index.js";
import type { Mpt } from "../../hypervisor/mpt.js";
import { PciDevice, type RegionHandler, SubRangeMap, reservedRange } from "../../pci/index.js";
import { type Partition, Scanner } from "../scanner.js";
import type { VgpuType } from "../types.js";
import { dispiRegisters, qextRegisters } from "./display.js";
import { VirtualEngine } from "./engine.js";
import { GttShadow } from "./gtt-shadow.js";
import { VirtualIrq } from "./irq.js";
import { pvInfoBlock } from "./pv-info.js";
import { type VgpuStats, newVgpuStats } from "./stats.js";

export class Vgpu {
  readonly pci: PciDevice;
  readonly display: DisplayEngine;
  readonly gm: Partition;
  readonly stats: VgpuStats = newVgpuStats();
  readonly engine: VirtualEngine;
  readonly irq: VirtualIrq;
  readonly gtt: GttShadow;
  /** BAR2 as its blocks. */
  readonly bar2: SubRangeMap;
  mpt: Mpt | undefined;

  constructor(
    readonly id: number,
    readonly uuid: string,
    readonly type: VgpuType,
    readonly gpu: ParentGpu,
    /** Offset of its slice in parent local memory. */
    readonly lmBase: number,
    gmBase: number,
    logger: Logger,
  ) {
    const log = new RateLimitedLog(logger);
    const unknown = (offset: number, write: boolean) =>
      log.warn({ vgpu: uuid, offset, write }, "unknown vGPU register");
    this.gm = { base: gmBase, size: type.graphicsMemory };
    this.display = new DisplayEngine({
      maxWidth: type.maxWidth,
      maxHeight: type.maxHeight,
      memorySize: type.localMemory,
    });
    this.irq = new VirtualIrq(Bar2Block.IRQ.size, this.stats, () => this.mpt?.injectInterrupt(0), unknown);
    this.engine = new VirtualEngine(
      Bar2Block.ENGINE.size,
      this,
      new Scanner(gpu.memory, this.gm),
      this.irq,
      this.stats,
      log,
    );
    this.gtt = new GttShadow(
      { id, uuid, lmBase, lmSize: type.localMemory, gm: this.gm },
      gpu.gtt,
      this.stats,
      log,
      () => this.irq.raise(Irq.GTT_FAULT),
    );
    this.bar2 = new SubRangeMap(
      BAR2_SIZE,
      [
        // No EDID blob and no VGA ioports: declared, so the bochs driver's probes are not "unknown".
        { name: "EDID", ...Bar2Block.EDID, handler: reservedRange },
        { name: "VGA ioports", ...Bar2Block.VGA_IOPORTS, handler: reservedRange },
        { name: "DISPI", ...Bar2Block.DISPI, handler: dispiRegisters(this.display) },
        { name: "QEMU extended registers", ...Bar2Block.QEXT, handler: qextRegisters(this.display) },
        {
          name: "PV info",
          ...Bar2Block.PV_INFO,
          handler: pvInfoBlock({
            lmBase,
            lmSize: type.localMemory,
            gmBase: this.gm.base,
            gmSize: this.gm.size,
            gttEntries: this.gtt.entries,
            maxWidth: type.maxWidth,
            maxHeight: type.maxHeight,
          }),
        },
        { name: "engine", ...Bar2Block.ENGINE, handler: this.engine.registers },
        { name: "interrupts", ...Bar2Block.IRQ, handler: this.irq.registers },
        { name: "GTT", ...Bar2Block.GTT, handler: this.gtt },
      ],
      unknown,
    );
    const stats = this.stats;
    const bar2 = this.bar2;
    const trapped: RegionHandler = {
      read(offset, count, out, at) {
        stats.traps++;
        bar2.read(offset, count, out, at);
      },
      write(offset, count, data, at) {
        stats.traps++;
        bar2.write(offset, count, data, at);
      },
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
          memory: {
            fd: gpu.localMemory.sliceAt(lmBase).fd,
            view: gpu.localMemory.bytes.subarray(lmBase, lmBase + type.localMemory),
          },
        },
        { index: VgpuBar.MMIO, size: BAR2_SIZE, kind: "mem32", handler: trapped },
      ],
      intx: true,
      req: true, // the REQ interrupt: the manager asks a VMM to release the vGPU (mgpu remove --force)
      msi: 1,
      vendorCapability: VENDOR_CAPABILITY,
      onReset: () => this.deviceReset(),
    });
  }

  /** The bytes of its local-memory slice (the host's side of BAR0). */
  get localMemory(): Uint8Array {
    return this.gpu.localMemory.bytes.subarray(this.lmBase, this.lmBase + this.type.localMemory);
  }

  /** ENGINE_ERROR as the guest reads it. */
  get error(): number {
    return this.engine.error;
  }

  get pending(): boolean {
    return this.engine.pending;
  }

  scanout(): Frame {
    return this.display.scanout(this.localMemory);
  }

  screenshotPng(): Buffer {
    return frameToPng(this.scanout());
  }

  /** Function reset (DEVICE_RESET, FLR): registers, display, GTT partition back to power-on. */
  private deviceReset(): void {
    this.engine.reset();
    this.irq.reset();
    this.display.reset();
    this.gtt.reset();
  }

  /** Drops all work and pending interrupts, and releases the partition in the parent's GTT (removal). */
  destroy(): void {
    this.engine.dropWork();
    this.irq.reset();
    this.gtt.clearParent();
    this.mpt = undefined;
  }
}
