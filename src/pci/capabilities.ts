/**
 * Capability structures in config space, built from declarations: power
 * management, MSI, MSI-X, PCI Express and vendor-specific. Each builder lays out
 * the bytes and masks and registers the write hooks that give it behaviour.
 */
import { Cfg, ConfigSpace, Status } from "./config-space.js";
import { PciDeclarationError } from "./errors.js";

export const CapId = { PM: 0x01, MSI: 0x05, VENDOR: 0x09, PCIE: 0x10, MSIX: 0x11 } as const;

/** Appends capabilities after the header, linking each into the list. */
export class CapabilityChain {
  private nextFree = 0x40;
  private lastNextPointer: number = Cfg.CAPABILITY_LIST;

  constructor(private readonly cfg: ConfigSpace) {}

  add(id: number, length: number): number {
    const at = this.nextFree;
    if (at + length > 0x100)
      throw new PciDeclarationError("capabilities do not fit in the 256-byte config space");
    this.cfg.set8(at, id);
    this.cfg.set8(at + 1, 0);
    this.cfg.set8(this.lastNextPointer, at);
    this.cfg.set16(Cfg.STATUS, this.cfg.u16(Cfg.STATUS) | Status.CAP_LIST);
    this.lastNextPointer = at + 1;
    this.nextFree = (at + length + 3) & ~3;
    return at;
  }
}

// ---- Power management ----------------------------------------------------

export type PowerState = 0 | 1 | 2 | 3;

/** PM capability: D0 and D3hot; leaving D3hot resets the function (No_Soft_Reset = 0). */
export class PowerManagement {
  readonly offset: number;
  private state: PowerState = 0;

  constructor(
    private readonly cfg: ConfigSpace,
    chain: CapabilityChain,
    private readonly onSoftReset: () => void,
  ) {
    this.offset = chain.add(CapId.PM, 8);
    cfg.set16(this.offset + 2, 0x0003); // PMC: version 3, no D1/D2, no PME
    cfg.set16(this.offset + 4, 0);
    cfg.mask(this.offset + 4, 2, 0x0103, 0x8000); // PowerState, PME_En; PME_Status W1C
    cfg.onWrite(this.offset + 4, this.offset + 6, () => this.powerStateWritten());
  }

  get powerState(): PowerState {
    return this.state;
  }

  private powerStateWritten(): void {
    const pmcsr = this.cfg.u16(this.offset + 4);
    const next = (pmcsr & 3) as PowerState;
    if (next === 1 || next === 2) {
      // Unsupported states: the write completes, its data is discarded.
      this.cfg.set16(this.offset + 4, (pmcsr & ~3) | this.state);
      return;
    }
    const previous = this.state;
    this.state = next;
    if (previous === 3 && next === 0) this.onSoftReset();
  }

  reset(): void {
    this.state = 0;
    this.cfg.set16(this.offset + 4, 0);
  }
}

// ---- MSI -----------------------------------------------------------------

/** MSI with a 64-bit address and per-vector masking. */
export class MsiCapability {
  readonly offset: number;
  readonly vectors: number;

  constructor(
    private readonly cfg: ConfigSpace,
    chain: CapabilityChain,
    vectors: number,
    onChange: () => void,
  ) {
    if (![1, 2, 4, 8, 16, 32].includes(vectors))
      throw new PciDeclarationError(`MSI vectors must be 1..32, a power of two`);
    this.vectors = vectors;
    this.offset = chain.add(CapId.MSI, 24);
    const at = this.offset;
    cfg.set16(at + 2, (Math.log2(vectors) << 1) | 0x80 | 0x100); // MMC, 64-bit, per-vector mask
    cfg.mask(at + 2, 2, 0x0001 | 0x0070); // enable, multiple message enable
    cfg.mask(at + 4, 4, 0xfffffffc);
    cfg.mask(at + 8, 4, 0xffffffff);
    cfg.mask(at + 12, 2, 0xffff);
    cfg.mask(at + 16, 4, vectors === 32 ? 0xffffffff : (1 << vectors) - 1);
    cfg.onWrite(at + 2, at + 4, () => {
      // Software may not enable more vectors than the device has.
      const ctl = cfg.u16(at + 2);
      const mme = Math.min((ctl >> 4) & 7, Math.log2(vectors));
      cfg.set16(at + 2, (ctl & ~0x70) | (mme << 4));
      onChange();
    });
    cfg.onWrite(at + 16, at + 20, () => onChange());
  }

  get enabled(): boolean {
    return (this.cfg.u16(this.offset + 2) & 1) !== 0;
  }
  /** Vectors software enabled (multiple message enable). */
  get enabledVectors(): number {
    return 1 << ((this.cfg.u16(this.offset + 2) >> 4) & 7);
  }
  masked(vector: number): boolean {
    return ((this.cfg.u32(this.offset + 16) >>> vector) & 1) !== 0;
  }
  setPending(vector: number, pending: boolean): void {
    const p = this.cfg.u32(this.offset + 20);
    this.cfg.set32(this.offset + 20, pending ? p | (1 << vector) : p & ~(1 << vector));
  }
  pending(vector: number): boolean {
    return ((this.cfg.u32(this.offset + 20) >>> vector) & 1) !== 0;
  }
  address(): bigint {
    return (BigInt(this.cfg.u32(this.offset + 8)) << 32n) | BigInt(this.cfg.u32(this.offset + 4));
  }
  data(): number {
    return this.cfg.u16(this.offset + 12);
  }
}

// ---- MSI-X ---------------------------------------------------------------

export interface MsixDeclaration {
  readonly vectors: number;
  /** BAR holding the table and PBA, and their offsets in it (8-byte aligned). */
  readonly bar: number;
  readonly tableOffset: number;
  readonly pbaOffset: number;
}

/**
 * MSI-X: the capability in config space, the vector table and the pending-bit
 * array in a BAR (trapped: `readTable`/`writeTable` serve that range).
 */
export class MsixCapability {
  readonly offset: number;
  readonly table: Uint32Array;
  readonly pba: Uint32Array;
  readonly tableSize: number;
  readonly pbaSize: number;

  constructor(
    private readonly cfg: ConfigSpace,
    chain: CapabilityChain,
    readonly decl: MsixDeclaration,
    private readonly onChange: () => void,
  ) {
    const n = decl.vectors;
    if (!Number.isInteger(n) || n < 1 || n > 2048)
      throw new PciDeclarationError("MSI-X vectors must be 1..2048");
    if (decl.tableOffset % 8 || decl.pbaOffset % 8)
      throw new PciDeclarationError("MSI-X table and PBA must be 8-byte aligned");
    this.tableSize = n * 16;
    this.pbaSize = Math.ceil(n / 64) * 8;
    const t0 = decl.tableOffset;
    const p0 = decl.pbaOffset;
    if (t0 < p0 + this.pbaSize && p0 < t0 + this.tableSize)
      throw new PciDeclarationError("MSI-X table and PBA overlap");
    this.offset = chain.add(CapId.MSIX, 12);
    cfg.set16(this.offset + 2, n - 1);
    cfg.mask(this.offset + 2, 2, 0xc000); // enable, function mask
    cfg.set32(this.offset + 4, decl.tableOffset | decl.bar);
    cfg.set32(this.offset + 8, decl.pbaOffset | decl.bar);
    cfg.onWrite(this.offset + 2, this.offset + 4, () => onChange());
    this.table = new Uint32Array(n * 4);
    this.pba = new Uint32Array(this.pbaSize / 4);
    this.reset();
  }

  reset(): void {
    this.table.fill(0);
    for (let v = 0; v < this.decl.vectors; v++) this.table[v * 4 + 3] = 1; // vectors start masked
    this.pba.fill(0);
    this.tableLive = false;
    this.cfg.set16(this.offset + 2, this.decl.vectors - 1);
  }

  get enabled(): boolean {
    return (this.cfg.u16(this.offset + 2) & 0x8000) !== 0;
  }
  get functionMasked(): boolean {
    return (this.cfg.u16(this.offset + 2) & 0x4000) !== 0;
  }
  /**
   * QEMU (like kernel VFIO) virtualizes the MSI-X table itself and never forwards
   * table writes, so the device's copy would stay masked forever. The table's
   * mask bits therefore count only once a client has written the table.
   */
  private tableLive = false;

  masked(vector: number): boolean {
    return this.functionMasked || (this.tableLive && (this.table[vector * 4 + 3]! & 1) !== 0);
  }
  setPending(vector: number, pending: boolean): void {
    const w = vector >> 5;
    const bit = 1 << (vector & 31);
    this.pba[w] = pending ? this.pba[w]! | bit : this.pba[w]! & ~bit;
  }
  pending(vector: number): boolean {
    return ((this.pba[vector >> 5]! >>> (vector & 31)) & 1) !== 0;
  }

  /** True if [offset, offset+count) of the BAR falls in the table or PBA. */
  covers(offset: number, count: number): boolean {
    const inside = (start: number, size: number) => offset >= start && offset + count <= start + size;
    return inside(this.decl.tableOffset, this.tableSize) || inside(this.decl.pbaOffset, this.pbaSize);
  }

  /** Reads table or PBA: 4- or 8-byte aligned accesses as the spec allows. */
  read(offset: number, count: number, out: Uint8Array, at: number): void {
    const src = this.source(offset, count);
    const bytes = new Uint8Array(src.words.buffer, src.words.byteOffset, src.words.byteLength);
    out.set(bytes.subarray(src.index, src.index + count), at);
  }

  write(offset: number, count: number, data: Uint8Array, at: number): void {
    const src = this.source(offset, count);
    if (src.words === this.pba) return; // the PBA is read-only
    const bytes = new Uint8Array(this.table.buffer);
    bytes.set(data.subarray(at, at + count), src.index);
    this.tableLive = true;
    // Reserved vector-control bits read as zero.
    for (let i = src.index >> 4; i <= (src.index + count - 1) >> 4; i++) this.table[i * 4 + 3]! &= 1;
    this.onChange();
  }

  private source(offset: number, count: number): { words: Uint32Array; index: number } {
    if ((count !== 4 && count !== 8) || offset % count !== 0)
      throw new RangeError("MSI-X access must be 4 or 8 bytes, aligned");
    if (offset >= this.decl.tableOffset && offset + count <= this.decl.tableOffset + this.tableSize)
      return { words: this.table, index: offset - this.decl.tableOffset };
    return { words: this.pba, index: offset - this.decl.pbaOffset };
  }
}

// ---- PCI Express ---------------------------------------------------------

/** A PCIe v2 endpoint capability with Function Level Reset. */
export class PcieCapability {
  readonly offset: number;

  constructor(
    private readonly cfg: ConfigSpace,
    chain: CapabilityChain,
    onFlr: () => void,
  ) {
    this.offset = chain.add(CapId.PCIE, 0x3c);
    const at = this.offset;
    cfg.set16(at + 2, 0x0002); // version 2, endpoint
    cfg.set32(at + 4, 1 << 28); // DevCap: FLR capable, 128-byte payload
    cfg.mask(at + 8, 2, 0xffff); // DevCtl (bit 15 initiates FLR, handled below)
    cfg.mask(at + 10, 2, 0, 0x000f); // DevSta error bits W1C
    cfg.set32(at + 12, 0x00000011); // LinkCap: 2.5 GT/s, x1
    cfg.mask(at + 16, 2, 0x01c3); // LinkCtl: ASPM, RCB, common clock, extended sync
    cfg.set16(at + 18, 0x0011); // LinkSta: 2.5 GT/s, x1
    cfg.set32(at + 0x24, 0); // DevCap2
    cfg.mask(at + 0x28, 2, 0x0400); // DevCtl2: LTR enable only
    cfg.set32(at + 0x2c, 0x2); // LinkCap2: 2.5 GT/s supported
    cfg.set16(at + 0x30, 0x1); // LinkCtl2: target 2.5 GT/s
    cfg.mask(at + 0x30, 2, 0x000f);
    cfg.onWrite(at + 8, at + 10, () => {
      const ctl = cfg.u16(at + 8);
      if (ctl & 0x8000) {
        cfg.set16(at + 8, ctl & ~0x8000); // reads as 0
        onFlr();
      }
    });
  }

  reset(): void {
    this.cfg.set16(this.offset + 8, 0); // DevCtl: all features off
    this.cfg.set16(this.offset + 10, 0);
  }
}

// ---- Vendor-specific -----------------------------------------------------

/** A vendor-specific capability: id, next, length, then the device's bytes (read-only). */
export function addVendorCapability(cfg: ConfigSpace, chain: CapabilityChain, data: Uint8Array): number {
  if (data.length + 3 > 0xff) throw new PciDeclarationError("vendor capability too long");
  const at = chain.add(CapId.VENDOR, 3 + data.length);
  cfg.set8(at + 2, 3 + data.length);
  cfg.bytes.set(data, at + 3);
  return at;
}
