/**
 * A BAR made of register blocks, QEMU-subregion style: each block sits at an
 * offset inside the BAR with its own handler, which sees offsets relative to
 * the block. An access goes to the block its first byte falls in; offsets no
 * block covers read as zero and drop writes, reported through one callback
 * (for a rate-limited log line). The lookup is a binary search over arrays
 * built once, so the trap path allocates nothing.
 */
import { PciDeclarationError } from "./errors.js";
import type { RegionHandler } from "./pci-device.js";

export interface SubRange {
  readonly name: string;
  readonly offset: number;
  readonly size: number;
  readonly handler: RegionHandler;
}

export class SubRangeMap implements RegionHandler {
  /** The blocks, sorted by offset. */
  readonly ranges: readonly SubRange[];
  private readonly starts: Float64Array;
  private readonly ends: Float64Array;

  constructor(
    readonly size: number,
    ranges: readonly SubRange[],
    private readonly onUnknown?: (offset: number, write: boolean) => void,
  ) {
    const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
    for (let i = 0; i < sorted.length; i++) {
      const r = sorted[i]!;
      if (r.size <= 0 || r.offset < 0 || r.offset + r.size > size)
        throw new PciDeclarationError(`sub-range ${r.name} does not fit the ${size}-byte region`);
      const previous = sorted[i - 1];
      if (previous && previous.offset + previous.size > r.offset)
        throw new PciDeclarationError(`sub-ranges ${previous.name} and ${r.name} overlap`);
    }
    this.ranges = sorted;
    this.starts = Float64Array.from(sorted, (r) => r.offset);
    this.ends = Float64Array.from(sorted, (r) => r.offset + r.size);
  }

  /** The block serving `offset`, or undefined. */
  find(offset: number): SubRange | undefined {
    const i = this.indexOf(offset);
    return i < 0 ? undefined : this.ranges[i];
  }

  read(offset: number, count: number, out: Uint8Array, at: number): void {
    const i = this.indexOf(offset);
    if (i < 0) {
      out.fill(0, at, at + count);
      this.onUnknown?.(offset, false);
      return;
    }
    this.ranges[i]!.handler.read(offset - this.starts[i]!, count, out, at);
  }

  write(offset: number, count: number, data: Uint8Array, at: number): void {
    const i = this.indexOf(offset);
    if (i < 0) {
      this.onUnknown?.(offset, true);
      return;
    }
    this.ranges[i]!.handler.write(offset - this.starts[i]!, count, data, at);
  }

  private indexOf(offset: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (offset < this.starts[mid]!) hi = mid - 1;
      else if (offset >= this.ends[mid]!) lo = mid + 1;
      else return mid;
    }
    return -1;
  }
}

/**
 * A block of registers computed as values: `read` returns the little-endian
 * value an access of `count` bytes at `offset` sees (bytes past the fourth
 * read as zero), `write` gets the value written (its first four bytes).
 */
export function valueRegisters(block: {
  read(offset: number, count: number): number;
  write?(offset: number, count: number, value: number): void;
}): RegionHandler {
  return {
    read(offset, count, out, at) {
      const value = block.read(offset, count);
      for (let i = 0; i < count; i++) out[at + i] = i < 4 ? (value >>> (8 * i)) & 0xff : 0;
    },
    write(offset, count, data, at) {
      if (!block.write) return;
      let value = 0;
      for (let i = 0; i < Math.min(count, 4); i++) value |= data[at + i]! << (8 * i);
      block.write(offset, count, value >>> 0);
    },
  };
}

/** A block that is there but holds nothing: reads zero, ignores writes (no log line: it is declared). */
export const reservedRange: RegionHandler = {
  read: (_offset, count, out, at) => void out.fill(0, at, at + count),
  write: () => {},
};
