/**
 * A register table for a trapped MMIO range: each 32-bit register has a reset
 * value, a writable mask, write-1-to-clear bits, and optional read/write
 * handlers. Accesses of 1, 2, 4 or 8 bytes at any alignment inside the range
 * are split into the dwords they touch. Unknown offsets read as zero and drop
 * writes, reported through `onUnknown` (for a rate-limited log line).
 */
import { Errno, VfioUserError } from "../vfio-user/index.js";
import { PciDeclarationError } from "./errors.js";
import { maskedWrite } from "./masked-write.js";

export interface RegisterSpec {
  readonly offset: number;
  readonly name: string;
  readonly reset?: number;
  /** Bits a write changes (default: all). */
  readonly writable?: number;
  /** Bits a write of 1 clears. */
  readonly w1c?: number;
  /** Computes the value on read (instead of the stored one). */
  readonly read?: () => number;
  /** Runs after the masked value is stored. */
  readonly write?: (value: number, previous: number) => void;
}

export class RegisterFile {
  readonly values: Uint32Array;
  private readonly specs: (RegisterSpec | undefined)[];
  private readonly byName = new Map<string, RegisterSpec>();

  constructor(
    readonly size: number,
    specs: readonly RegisterSpec[],
    private readonly onUnknown?: (offset: number, write: boolean) => void,
  ) {
    if (size % 4 !== 0) throw new PciDeclarationError("register range size must be a multiple of 4");
    this.values = new Uint32Array(size / 4);
    this.specs = new Array<RegisterSpec | undefined>(size / 4);
    for (const s of specs) {
      if (s.offset % 4 !== 0 || s.offset < 0 || s.offset >= size)
        throw new PciDeclarationError(`register ${s.name} at bad offset`);
      if (this.specs[s.offset / 4])
        throw new PciDeclarationError(`two registers at 0x${s.offset.toString(16)}`);
      this.specs[s.offset / 4] = s;
      this.byName.set(s.name, s);
    }
    this.reset();
  }

  reset(): void {
    this.values.fill(0);
    for (const s of this.specs) if (s) this.values[s.offset / 4] = (s.reset ?? 0) >>> 0;
  }

  get(name: string): number {
    const s = this.byName.get(name);
    if (!s) throw new PciDeclarationError(`no register ${name}`);
    return s.read ? s.read() >>> 0 : this.values[s.offset / 4]!;
  }

  /** Sets a register's stored value directly (device side: no masks, no hooks). */
  set(name: string, value: number): void {
    const s = this.byName.get(name);
    if (!s) throw new PciDeclarationError(`no register ${name}`);
    this.values[s.offset / 4] = value >>> 0;
  }

  read(offset: number, count: number, out: Uint8Array, at: number): void {
    this.check(offset, count);
    for (let i = 0; i < count;) {
      const o = offset + i;
      const index = o >> 2;
      const spec = this.specs[index];
      let value = 0;
      if (spec) value = spec.read ? spec.read() >>> 0 : this.values[index]!;
      else this.onUnknown?.(index * 4, false);
      const byte0 = o & 3;
      const n = Math.min(4 - byte0, count - i);
      for (let b = 0; b < n; b++) out[at + i + b] = (value >>> (8 * (byte0 + b))) & 0xff;
      i += n;
    }
  }

  write(offset: number, count: number, data: Uint8Array, at: number): void {
    this.check(offset, count);
    for (let i = 0; i < count;) {
      const o = offset + i;
      const index = o >> 2;
      const byte0 = o & 3;
      const n = Math.min(4 - byte0, count - i);
      const spec = this.specs[index];
      if (!spec) {
        this.onUnknown?.(index * 4, true);
        i += n;
        continue;
      }
      let incoming = 0;
      let lanes = 0;
      for (let b = 0; b < n; b++) {
        incoming |= data[at + i + b]! << (8 * (byte0 + b));
        lanes |= 0xff << (8 * (byte0 + b));
      }
      const previous = this.values[index]!;
      // Only the byte lanes written take part.
      const next = maskedWrite(
        previous,
        incoming,
        (spec.writable ?? 0xffffffff) & lanes,
        (spec.w1c ?? 0) & lanes,
      );
      this.values[index] = next;
      spec.write?.(next, previous);
      i += n;
    }
  }

  private check(offset: number, count: number): void {
    if (
      (count !== 1 && count !== 2 && count !== 4 && count !== 8) ||
      offset < 0 ||
      offset + count > this.size
    )
      throw new VfioUserError(Errno.EINVAL, `register access of ${count} bytes at 0x${offset.toString(16)}`);
  }
}
