/**
 * GTT shadowing: the guest writes its own GTT partition in BAR2; each entry
 * it completes is validated and written to the parent's GTT at the
 * partition's place, so nothing a guest writes can point the engine outside
 * the memory it owns. A local-memory target must lie in the vGPU's slice; a
 * system-memory target is a guest frame, reached through the mediator's
 * system memory and tagged with the vGPU's id.
 */
import {
  GTT_ADDRESS_MASK,
  GTT_SYSTEM,
  GTT_SYSTEM_ADDRESS_LIMIT,
  GTT_VALID,
  PAGE_SIZE,
} from "../../abi/index.js";
import type { RateLimitedLog } from "../../base/index.js";
import type { Gtt } from "../../gpu/index.js";
import type { RegionHandler } from "../../pci/index.js";
import type { Partition } from "../scanner.js";
import type { VgpuStats } from "./stats.js";

export interface GttShadowOwner {
  readonly id: number;
  readonly uuid: string;
  /** Its local-memory slice in the parent: [lmBase, lmBase + lmSize). */
  readonly lmBase: number;
  readonly lmSize: number;
  /** Its graphics-memory partition (GMAs), which its GTT maps entry by entry. */
  readonly gm: Partition;
}

export class GttShadow implements RegionHandler {
  /** The guest's entries as it wrote them, two dwords each. */
  private readonly lo: Uint32Array;
  private readonly hi: Uint32Array;
  private readonly firstParentEntry: number;

  constructor(
    private readonly owner: GttShadowOwner,
    private readonly gtt: Gtt,
    private readonly stats: VgpuStats,
    private readonly log: RateLimitedLog,
    /** A refused entry raises the guest's GTT fault interrupt. */
    private readonly onRefused: () => void,
  ) {
    const entries = owner.gm.size / PAGE_SIZE;
    this.lo = new Uint32Array(entries);
    this.hi = new Uint32Array(entries);
    this.firstParentEntry = owner.gm.base / PAGE_SIZE;
  }

  get entries(): number {
    return this.lo.length;
  }

  read(offset: number, count: number, out: Uint8Array, at: number): void {
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      const index = o >> 3;
      const word = index < this.lo.length ? (o & 4 ? this.hi[index]! : this.lo[index]!) : 0;
      out[at + i] = (word >>> (8 * (o & 3))) & 0xff;
    }
  }

  write(offset: number, count: number, data: Uint8Array, at: number): void {
    // Entries change when their low dword is written (8-byte writes update both halves first).
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      const index = o >> 3;
      if (index >= this.lo.length) return;
      const words = o & 4 ? this.hi : this.lo;
      const shift = 8 * (o & 3);
      words[index] = ((words[index]! & ~(0xff << shift)) | (data[at + i]! << shift)) >>> 0;
    }
    const first = offset >> 3;
    const last = (offset + count - 1) >> 3;
    for (let index = first; index <= last && index < this.lo.length; index++) this.shadowEntry(index);
  }

  /** Function reset: the guest's entries and the parent's partition cleared. */
  reset(): void {
    this.lo.fill(0);
    this.hi.fill(0);
    this.clearParent();
  }

  /** Releases the partition in the parent's GTT. */
  clearParent(): void {
    this.gtt.clear(this.firstParentEntry, this.lo.length);
  }

  /** Validates a guest entry and writes the parent's: nothing can point outside what the guest owns. */
  private shadowEntry(index: number): void {
    this.stats.gttUpdates++;
    const lo = this.lo[index]!;
    const hi = this.hi[index]!;
    const parentIndex = this.firstParentEntry + index;
    const g = this.gtt;
    if (!(lo & GTT_VALID)) {
      g.set(parentIndex, 0, 0);
      return;
    }
    const address = hi * 0x100000000 + ((lo & GTT_ADDRESS_MASK) >>> 0);
    if (lo & GTT_SYSTEM) {
      // A guest frame: the parent reaches it through the mediator's system memory, tagged with our id
      // (16 bits above bit 48: the mediator keeps ids below 2^16 and reuses only freed ones).
      if (address >= GTT_SYSTEM_ADDRESS_LIMIT) return this.refuse(index, address);
      g.set(
        parentIndex,
        (address & GTT_ADDRESS_MASK) | GTT_VALID | GTT_SYSTEM,
        Math.floor(address / 0x100000000) | (this.owner.id << 16),
      );
      return;
    }
    const { lmBase, lmSize } = this.owner;
    if (address < lmBase || address + PAGE_SIZE > lmBase + lmSize) return this.refuse(index, address);
    g.set(parentIndex, lo & ~GTT_SYSTEM, hi);
  }

  private refuse(index: number, address: number): void {
    this.stats.gttRejected++;
    this.log.warn(
      { vgpu: this.owner.uuid, index, address: `0x${address.toString(16)}` },
      "GTT entry outside the vGPU's memory refused",
    );
    this.gtt.set(this.firstParentEntry + index, 0, 0);
    this.onRefused();
  }
}
