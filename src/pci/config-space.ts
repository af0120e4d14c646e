/**
 * PCI configuration space with the access semantics a guest kernel relies on:
 * per-byte writable and write-1-to-clear masks (everything else read-only),
 * accesses of 1, 2 or 4 bytes at natural alignment for writes (reads of any
 * span, as VMMs read config space in bulk), and write hooks that run after the
 * masked value is stored — the one place side effects live.
 */
import { VfioUserError, Errno } from "../vfio-user/index.js";
import { maskedWrite } from "./masked-write.js";

export type WriteHook = (offset: number, size: number) => void;

interface HookRange {
  readonly start: number;
  readonly end: number;
  readonly hook: WriteHook;
}

export const PCI_CONFIG_SIZE = 256;
export const PCIE_CONFIG_SIZE = 4096;

// Type-0 header offsets.
export const Cfg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

export const Command = {
  IO: 1 << 0,
  MEMORY: 1 << 1,
  BUS_MASTER: 1 << 2,
  PARITY: 1 << 6,
  SERR: 1 << 8,
  INTX_DISABLE: 1 << 10,
} as const;

export const Status = {
  INTERRUPT: 1 << 3,
  CAP_LIST: 1 << 4,
  /** The error bits software clears by writing 1. */
  W1C: 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000,
  SIG_TARGET_ABORT: 0x0800,
  REC_MASTER_ABORT: 0x2000,
  SIG_SYSTEM_ERROR: 0x4000,
} as const;

export class ConfigSpace {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Bits a write may change. */
  readonly writable: Uint8Array;
  /** Bits a write of 1 clears. */
  readonly w1c: Uint8Array;
  private readonly hooks: HookRange[] = [];

  constructor(readonly size: number = PCI_CONFIG_SIZE) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
    this.writable = new Uint8Array(size);
    this.w1c = new Uint8Array(size);
  }

  // Raw accessors for the device model (no masks, no hooks).
  u8(offset: number): number {
    return this.bytes[offset]!;
  }
  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }
  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }
  set8(offset: number, value: number): void {
    this.bytes[offset] = value;
  }
  set16(offset: number, value: number): void {
    this.view.setUint16(offset, value, true);
  }
  set32(offset: number, value: number): void {
    this.view.setUint32(offset, value >>> 0, true);
  }

  /** Declares which bits of a field the guest may write (and which it clears by writing 1). */
  mask(offset: number, width: 1 | 2 | 4, writable: number, w1c = 0): void {
    for (let i = 0; i < width; i++) {
      this.writable[offset + i] = (writable >>> (8 * i)) & 0xff;
      this.w1c[offset + i] = (w1c >>> (8 * i)) & 0xff;
    }
  }

  /** Runs `hook` after any write that touches [start, end). */
  onWrite(start: number, end: number, hook: WriteHook): void {
    this.hooks.push({ start, end, hook });
  }

  /** A guest read of any span inside the space. */
  read(offset: number, count: number, out: Uint8Array, at: number): void {
    if (offset < 0 || count <= 0 || offset + count > this.size)
      throw new VfioUserError(Errno.EINVAL, `config read ${offset}+${count} outside ${this.size} bytes`);
    out.set(this.bytes.subarray(offset, offset + count), at);
  }

  /** A guest write: 1, 2 or 4 bytes, naturally aligned, as a CPU can issue them. */
  write(offset: number, count: number, data: Uint8Array, at: number): void {
    if ((count !== 1 && count !== 2 && count !== 4) || offset % count !== 0 || offset + count > this.size)
      throw new VfioUserError(Errno.EINVAL, `config write of ${count} bytes at 0x${offset.toString(16)}`);
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      this.bytes[o] = maskedWrite(this.bytes[o]!, data[at + i]!, this.writable[o]!, this.w1c[o]!);
    }
    const end = offset + count;
    for (const h of this.hooks) if (offset < h.end && h.start < end) h.hook(offset, count);
  }

  /** Convenience for tests and device code: a masked guest write of a little-endian value. */
  writeValue(offset: number, count: 1 | 2 | 4, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.write(offset, count, b, 0);
  }

  readValue(offset: number, count: 1 | 2 | 4): number {
    return count === 1 ? this.u8(offset) : count === 2 ? this.u16(offset) : this.u32(offset);
  }
}
