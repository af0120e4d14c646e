/**
 * A PCI function on vfio-user, built from declarations: identity, BARs (trapped
 * handlers and fd-backed mmap areas, mixed), expansion ROM, capabilities,
 * interrupts, DMA and migration. It implements VfioDevice, so a Server can
 * serve it as is; a device model adds its behaviour through handlers and hooks.
 *
 * Resets restore the documented state: DEVICE_RESET, PCIe FLR and a PM
 * D3hot→D0 transition all return config space to its power-on image (BAR
 * addresses, command, MSI/MSI-X programming and masks cleared), clear interrupt
 * masks and pending bits, reset the MSI-X table, and call `onReset`; the VMM's
 * DMA mappings and eventfd wiring survive (they belong to the VMM). DEVICE_RESET
 * also returns the migration state machine to RUNNING.
 */
import { Mapping } from "../sys/index.js";
import {
  DEVICE_FEATURE_GET,
  DEVICE_FEATURE_MASK,
  DEVICE_FEATURE_PROBE,
  DEVICE_FEATURE_SET,
  DEVICE_FLAGS_PCI,
  DEVICE_FLAGS_RESET,
  DMA_LOGGING_REPORT_SIZE,
  type DeviceInfo,
  type DeviceSession,
  type DmaMapRequest,
  type DmaUnmapRequest,
  Errno,
  FEATURE_HEADER_SIZE,
  Feature,
  type FeatureResult,
  type IrqInfo,
  PCI_NUM_IRQS,
  PCI_NUM_REGIONS,
  PciRegion,
  REGION_INFO_FLAG_MMAP,
  REGION_INFO_FLAG_READ,
  REGION_INFO_FLAG_WRITE,
  type RegionDescription,
  type SetIrqsRequest,
  type SparseMmapArea,
  type VfioDevice,
  VfioUserError,
  decodeDmaLoggingControl,
  decodeDmaLoggingReport,
  decodeMigDeviceState,
  encodeDmaLoggingReport,
  encodeFeatureU64,
  encodeMigDeviceState,
} from "../vfio-user/index.js";
import {
  CapabilityChain,
  MsiCapability,
  type MsixDeclaration,
  MsixCapability,
  PcieCapability,
  PowerManagement,
  addVendorCapability,
} from "./capabilities.js";
import { Cfg, Command, ConfigSpace, PCIE_CONFIG_SIZE, PCI_CONFIG_SIZE } from "./config-space.js";
import { DmaSpace } from "./dma.js";
import { type BarDeclaration, INTX_PIN_A, type Identity, initHeader, validateBars } from "./header.js";
import { Interrupts } from "./interrupts.js";
import { Migration, type MigrationHooks, type MigrationSupport } from "./migration.js";
import { PciDeclarationError } from "./errors.js";

/** Serves the trapped part of a region. Buffers are the connection's; copy what you keep. */
export interface RegionHandler {
  read(offset: number, count: number, out: Uint8Array, at: number): void;
  write(offset: number, count: number, data: Uint8Array, at: number): void;
}

export interface BarSpec extends BarDeclaration {
  /** Memory behind (part of) the BAR, handed to the VMM to mmap: never trapped. */
  readonly memory?: {
    readonly fd: number;
    /** Where the BAR starts in the fd. */
    readonly fdOffset?: number;
    /** The mmap-able areas, relative to the BAR (default: the whole BAR). */
    readonly areas?: readonly SparseMmapArea[];
    /**
     * The device's own view of this memory, when its owner already has one
     * (then the fd is not mapped again here, and the owner decides its lifetime).
     */
    readonly view?: Uint8Array;
  };
  /** Serves every access outside the memory areas (and the MSI-X table, if it lives here). */
  readonly handler?: RegionHandler;
  /** VFIO region type capability (e.g. a vendor-defined type for an enlightened driver). */
  readonly regionType?: { readonly type: number; readonly subtype: number };
}

export type ResetKind = "device" | "flr" | "power";

export interface PciDeviceOptions {
  readonly identity: Identity;
  readonly bars: readonly BarSpec[];
  /** PCI Express endpoint (4 KiB config space, FLR) rather than conventional PCI. */
  readonly pcie?: boolean;
  /** Expansion ROM image (padded to a power of two ≥ 2 KiB). */
  readonly rom?: Uint8Array;
  readonly intx?: boolean;
  /** MSI vectors (1..32, a power of two). */
  readonly msi?: number;
  readonly msix?: MsixDeclaration;
  readonly powerManagement?: boolean;
  readonly vendorCapability?: Uint8Array;
  readonly err?: boolean;
  readonly req?: boolean;
  readonly migration?: { readonly hooks: MigrationHooks; readonly support?: MigrationSupport };
  readonly onReset?: (kind: ResetKind) => void;
}

interface Bar {
  readonly spec: BarSpec;
  /** The device's side of the BAR's memory. */
  readonly memory?: Uint8Array;
  /** Our own mapping of it (none when the owner gave its view). */
  readonly mapping?: Mapping;
  readonly areas: readonly SparseMmapArea[];
}

export class PciDevice implements VfioDevice {
  readonly config: ConfigSpace;
  readonly irqs: Interrupts;
  readonly dma: DmaSpace;
  readonly migration: Migration | undefined;
  readonly msi: MsiCapability | undefined;
  readonly msix: MsixCapability | undefined;
  readonly pm: PowerManagement | undefined;
  readonly pcieCap: PcieCapability | undefined;
  /** The connected client, if any. */
  session: DeviceSession | undefined;
  /** Resets performed, by kind (tests and metrics). */
  readonly resets: Record<ResetKind, number> = { device: 0, flr: 0, power: 0 };
  private readonly bars: (Bar | undefined)[] = [];
  private readonly rom: Uint8Array | undefined;
  private readonly powerOnImage: Uint8Array;
  private closed = false;

  constructor(private readonly options: PciDeviceOptions) {
    validateBars(options.bars);
    this.config = new ConfigSpace(options.pcie ? PCIE_CONFIG_SIZE : PCI_CONFIG_SIZE);
    if (options.rom) {
      let size = 2048;
      while (size < options.rom.length) size *= 2;
      this.rom = new Uint8Array(size);
      this.rom.set(options.rom);
    }
    initHeader(this.config, options.identity, options.bars, this.rom?.length, options.intx ? INTX_PIN_A : 0);
    const chain = new CapabilityChain(this.config);
    const masks = () => this.irqs.masksChanged();
    if (options.powerManagement !== false)
      this.pm = new PowerManagement(this.config, chain, () => this.functionReset("power"));
    if (options.msi) this.msi = new MsiCapability(this.config, chain, options.msi, masks);
    if (options.msix) {
      const bar = options.bars.find((b) => b.index === options.msix!.bar);
      if (!bar || bar.kind === "io")
        throw new PciDeclarationError(`MSI-X table BAR${options.msix.bar} is not a memory BAR`);
      this.msix = new MsixCapability(this.config, chain, options.msix, masks);
      const m = this.msix;
      if (m.decl.tableOffset + m.tableSize > bar.size || m.decl.pbaOffset + m.pbaSize > bar.size)
        throw new PciDeclarationError("MSI-X table or PBA does not fit its BAR");
    }
    if (options.pcie) this.pcieCap = new PcieCapability(this.config, chain, () => this.functionReset("flr"));
    if (options.vendorCapability) addVendorCapability(this.config, chain, options.vendorCapability);
    this.powerOnImage = this.config.bytes.slice();

    for (const spec of options.bars) {
      const areas = spec.memory ? (spec.memory.areas ?? [{ offset: 0, size: spec.size }]) : [];
      for (const a of areas)
        if (a.offset < 0 || a.offset + a.size > spec.size || a.offset % 4096 || a.size % 4096)
          throw new PciDeclarationError(`BAR${spec.index} mmap area must be page-aligned and inside the BAR`);
      if (spec.memory?.view && spec.memory.view.length !== spec.size)
        throw new PciDeclarationError(`BAR${spec.index} memory view is not the BAR's size`);
      const mapping =
        spec.memory && !spec.memory.view
          ? Mapping.ofFd(spec.memory.fd, spec.size, { offset: spec.memory.fdOffset ?? 0 })
          : undefined;
      const memory = spec.memory?.view ?? mapping?.bytes;
      this.bars[spec.index] = { spec, areas, ...(memory ? { memory } : {}), ...(mapping ? { mapping } : {}) };
    }
    this.irqs = new Interrupts(
      this.config,
      { intx: options.intx ?? false, err: options.err ?? false, req: options.req ?? false },
      this.msi,
      this.msix,
    );
    this.dma = new DmaSpace({
      session: () => this.session,
      busMaster: () => (this.config.u16(Cfg.COMMAND) & Command.BUS_MASTER) !== 0,
    });
    this.migration = options.migration
      ? new Migration(options.migration.hooks, options.migration.support)
      : undefined;
  }

  /** The bytes behind a BAR's memory (the device's side of the mmap areas). */
  barMemory(index: number): Uint8Array {
    if (this.closed) throw new VfioUserError(Errno.ENODEV, "the device was closed");
    const m = this.bars[index]?.memory;
    if (!m) throw new PciDeclarationError(`BAR${index} has no memory`);
    return m;
  }

  /**
   * The device is gone (its vGPU removed): the client's DMA windows and
   * eventfds and the BAR mappings are released now; later accesses get ENODEV.
   * Views from barMemory() must not be used after this.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.session = undefined;
    this.dma.unmapAll();
    this.dma.releaseStale();
    this.irqs.release();
    for (const bar of this.bars) bar?.mapping?.unmap();
  }

  // ---- VfioDevice ---------------------------------------------------------

  deviceInfo(): DeviceInfo {
    return {
      flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
      numRegions: PCI_NUM_REGIONS,
      numIrqs: PCI_NUM_IRQS,
    };
  }

  regionInfo(index: number): RegionDescription {
    if (!Number.isInteger(index) || index < 0 || index >= PCI_NUM_REGIONS)
      throw new VfioUserError(Errno.EINVAL, `no region ${index}`);
    const rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
    if (index === PciRegion.CONFIG) return { index, flags: rw, size: this.config.size, offset: 0 };
    if (index === PciRegion.ROM)
      return this.rom
        ? { index, flags: REGION_INFO_FLAG_READ, size: this.rom.length, offset: 0 }
        : { index, flags: 0, size: 0, offset: 0 };
    const bar = this.bars[index];
    if (!bar) return { index, flags: 0, size: 0, offset: 0 };
    const type = bar.spec.regionType ? { type: bar.spec.regionType } : {};
    if (!bar.spec.memory) return { index, flags: rw, size: bar.spec.size, offset: 0, ...type };
    return {
      index,
      flags: rw | REGION_INFO_FLAG_MMAP,
      size: bar.spec.size,
      offset: bar.spec.memory.fdOffset ?? 0,
      sparseMmap: bar.areas,
      fd: bar.spec.memory.fd,
      ...type,
    };
  }

  irqInfo(index: number): IrqInfo {
    return this.irqs.irqInfo(index);
  }

  setIrqs(request: SetIrqsRequest, eventfds: readonly number[]): void {
    this.irqs.setIrqs(request, eventfds);
  }

  regionRead(region: number, offset: number, count: number, out: Uint8Array, at: number): void {
    if (region === PciRegion.CONFIG) return this.config.read(offset, count, out, at);
    if (region === PciRegion.ROM) {
      if (!this.rom || offset + count > this.rom.length)
        throw new VfioUserError(Errno.EINVAL, "ROM read out of range");
      out.set(this.rom.subarray(offset, offset + count), at);
      return;
    }
    this.barAccess(region, offset, count, out, at, false);
  }

  regionWrite(region: number, offset: number, count: number, data: Uint8Array, at: number): void {
    if (region === PciRegion.CONFIG) return this.config.write(offset, count, data, at);
    if (region === PciRegion.ROM) throw new VfioUserError(Errno.EINVAL, "the expansion ROM is read-only");
    this.barAccess(region, offset, count, data, at, true);
  }

  dmaMap(request: DmaMapRequest, fd: number | undefined): void {
    this.dma.map(request, fd);
  }

  dmaUnmap(request: DmaUnmapRequest): Uint8Array | void {
    return this.dma.unmap(request);
  }

  reset(): void {
    this.migration?.reset();
    this.functionReset("device");
  }

  feature(flags: number, data: Uint8Array, argsz: number): FeatureResult {
    const feature = flags & DEVICE_FEATURE_MASK;
    const get = (flags & DEVICE_FEATURE_GET) !== 0;
    const set = (flags & DEVICE_FEATURE_SET) !== 0;
    const probe = (flags & DEVICE_FEATURE_PROBE) !== 0;
    if (get && set && !probe) throw new VfioUserError(Errno.EINVAL, "GET and SET together");
    const supports = (canGet: boolean, canSet: boolean) => {
      if ((get && !canGet) || (set && !canSet))
        throw new VfioUserError(Errno.EINVAL, `feature ${feature} direction`);
    };
    const none = { data: new Uint8Array(0) };
    const mig = this.migration;
    switch (feature) {
      case Feature.MIGRATION: {
        if (!mig) break;
        supports(true, false);
        return probe ? none : { data: encodeFeatureU64(mig.flags) };
      }
      case Feature.MIG_DEVICE_STATE: {
        if (!mig) break;
        supports(true, true);
        if (probe) return none;
        if (set) mig.set(decodeMigDeviceState(data));
        return { data: encodeMigDeviceState(mig.state) };
      }
      case Feature.DMA_LOGGING_START: {
        supports(false, true);
        if (probe) return none;
        this.dma.startLogging(decodeDmaLoggingControl(data));
        return { data };
      }
      case Feature.DMA_LOGGING_STOP: {
        supports(false, true);
        if (probe) return none;
        this.dma.stopLogging();
        return none;
      }
      case Feature.DMA_LOGGING_REPORT: {
        supports(true, false);
        if (probe) return none;
        const report = decodeDmaLoggingReport(data);
        const bitmap = this.dma.report(report, argsz - FEATURE_HEADER_SIZE - DMA_LOGGING_REPORT_SIZE);
        return { data: encodeDmaLoggingReport(data, bitmap) };
      }
    }
    throw new VfioUserError(Errno.ENOTTY, `feature ${feature} not supported`);
  }

  migrationRead(size: number): Uint8Array {
    if (!this.migration) throw new VfioUserError(Errno.EINVAL, "device does not migrate");
    return this.migration.read(size);
  }

  migrationWrite(data: Uint8Array): void {
    if (!this.migration) throw new VfioUserError(Errno.EINVAL, "device does not migrate");
    this.migration.write(data);
  }

  heldFdCount(): number {
    return this.irqs.heldFds;
  }

  attach(session: DeviceSession): void {
    this.session = session;
  }

  /** The client left: its mappings and eventfds go; the device state stays (spec). */
  detach(session: DeviceSession): void {
    if (this.session !== session) return;
    this.session = undefined;
    this.dma.unmapAll();
    this.irqs.release();
  }

  // ---- internals ----------------------------------------------------------

  private barAccess(
    region: number,
    offset: number,
    count: number,
    buf: Uint8Array,
    at: number,
    isWrite: boolean,
  ): void {
    if (this.closed) throw new VfioUserError(Errno.ENODEV, "the device was closed");
    const bar = this.bars[region];
    if (!bar || region > PciRegion.BAR5) throw new VfioUserError(Errno.EINVAL, `no BAR${region}`);
    if (count === 0 || offset + count > bar.spec.size)
      throw new VfioUserError(
        Errno.EINVAL,
        `BAR${region} access ${offset}+${count} outside ${bar.spec.size}`,
      );
    // As kernel VFIO: no access while decoding is off or the function sleeps in D3.
    const decode = bar.spec.kind === "io" ? Command.IO : Command.MEMORY;
    if (!(this.config.u16(Cfg.COMMAND) & decode) || (this.pm && this.pm.powerState !== 0))
      throw new VfioUserError(Errno.EIO, `BAR${region} is not decoded`);
    for (const a of bar.areas) {
      if (offset >= a.offset && offset + count <= a.offset + a.size) {
        const mem = bar.memory!;
        if (isWrite) mem.set(buf.subarray(at, at + count), offset);
        else buf.set(mem.subarray(offset, offset + count), at);
        return;
      }
    }
    if (this.msix && this.msix.decl.bar === region && this.msix.covers(offset, count)) {
      try {
        if (isWrite) this.msix.write(offset, count, buf, at);
        else this.msix.read(offset, count, buf, at);
      } catch (e) {
        throw new VfioUserError(Errno.EINVAL, e instanceof Error ? e.message : String(e));
      }
      return;
    }
    const handler = bar.spec.handler;
    if (!handler)
      throw new VfioUserError(Errno.EINVAL, `BAR${region} offset 0x${offset.toString(16)} has no handler`);
    if (isWrite) handler.write(offset, count, buf, at);
    else handler.read(offset, count, buf, at);
  }

  private functionReset(kind: ResetKind): void {
    this.config.bytes.set(this.powerOnImage);
    this.pm?.reset();
    this.msix?.reset();
    this.irqs.reset();
    this.resets[kind]++;
    this.options.onReset?.(kind);
  }
}
