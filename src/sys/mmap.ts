import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  type NativePointer,
  addressOf,
  check,
  errno,
  libc,
  mmapAt,
  viewNative,
} from "./libc.js";
import { SysError } from "./errors.js";

export interface MapOptions {
  readonly offset?: number;
  readonly readable?: boolean;
  readonly writable?: boolean;
}

/**
 * A shared mapping of (part of) a file as an ArrayBuffer, with no copy.
 *
 * Stale views are the danger of handing out raw memory: a JS view that outlives
 * munmap would fault. So a mapping is never unmapped while views may exist;
 * `revoke()` instead replaces the pages with private anonymous memory, so late
 * accesses read zeros and write nowhere, and the file is no longer reachable.
 * `unmap()` is for owners who know no view escaped.
 */
interface MappingRecord {
  readonly pointer: NativePointer;
  readonly length: number;
  state: "mapped" | "revoked" | "unmapped";
}

/**
 * Address ranges are returned to the system once nothing can touch them: when
 * the ArrayBuffer over them has been collected, no view of it is left.
 */
const collector = new FinalizationRegistry<MappingRecord>((record) => {
  if (record.state !== "unmapped") libc.munmap(record.pointer, record.length);
});

export class Mapping {
  readonly address: bigint;
  private readonly record: MappingRecord;
  private view: Uint8Array | undefined;

  private constructor(
    pointer: NativePointer,
    readonly length: number,
  ) {
    this.address = addressOf(pointer);
    this.record = { pointer, length, state: "mapped" };
  }

  /**
   * The mapping as an ArrayBuffer, made on first use: an external buffer counts
   * against the JS heap's external memory and makes the collector run, so a
   * mapping nobody reads (a DMA window mapped and unmapped) never creates one.
   */
  get buffer(): ArrayBuffer {
    return this.bytes.buffer as ArrayBuffer;
  }

  get bytes(): Uint8Array {
    if (this.view) return this.view;
    if (this.record.state === "unmapped") throw new SysError("mmap", 9 /* EBADF */, "mapping was unmapped");
    const buffer = viewNative(this.record.pointer, this.length);
    collector.register(buffer, this.record, this.record);
    return (this.view = new Uint8Array(buffer));
  }

  static ofFd(fd: number, length: number, options: MapOptions = {}): Mapping {
    if (!Number.isSafeInteger(length) || length <= 0) throw new SysError("mmap", 22, `bad length ${length}`);
    const prot = (options.readable === false ? 0 : PROT_READ) | (options.writable === false ? 0 : PROT_WRITE);
    const pointer = libc.mmap(null, length, prot, MAP_SHARED, fd, options.offset ?? 0);
    if (pointer === null || addressOf(pointer) === 0xffffffffffffffffn) throw new SysError("mmap", errno());
    return new Mapping(pointer, length);
  }

  get revoked(): boolean {
    return this.record.state !== "mapped";
  }

  /**
   * Cuts the link to the file; existing views stay valid but see private zero
   * pages. The range itself is released when the last view is collected.
   */
  revoke(): void {
    if (this.record.state !== "mapped") return;
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    const p = mmapAt(this.address, this.length, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p === null || addressOf(p) !== this.address) throw new SysError("mmap(MAP_FIXED)", errno());
    this.record.state = "revoked";
  }

  /** Releases the address range now. Only safe if no view of `buffer` is used afterwards. */
  unmap(): void {
    if (this.record.state === "unmapped") return;
    check("munmap", libc.munmap(this.record.pointer, this.length));
    this.record.state = "unmapped";
    collector.unregister(this.record);
    this.view = undefined;
  }
}

/**
 * One contiguous address range assembled from pieces: reserved inaccessible
 * (PROT_NONE) first, then parts of it replaced in place (MAP_FIXED) by memory
 * private to this process or by a shared file, e.g. one memfd per slice, so a
 * single view covers all of them while each file holds only its own piece.
 * Views of `buffer` stay valid while pieces are swapped underneath them.
 */
export class ComposedMapping {
  readonly buffer: ArrayBuffer;
  readonly bytes: Uint8Array;
  readonly address: bigint;
  private readonly record: MappingRecord;

  private constructor(
    pointer: NativePointer,
    readonly length: number,
  ) {
    this.buffer = viewNative(pointer, length);
    this.bytes = new Uint8Array(this.buffer);
    this.address = addressOf(pointer);
    this.record = { pointer, length, state: "mapped" };
    collector.register(this.buffer, this.record, this.record);
  }

  /** Reserves `length` bytes of address space; nothing in it is accessible until a piece is mapped. */
  static reserve(length: number): ComposedMapping {
    if (!Number.isSafeInteger(length) || length <= 0 || length % 4096)
      throw new SysError("mmap", 22, `bad length ${length}`);
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    const pointer = libc.mmap(null, length, PROT_NONE, flags, -1, 0);
    if (pointer === null || addressOf(pointer) === 0xffffffffffffffffn) throw new SysError("mmap", errno());
    return new ComposedMapping(pointer, length);
  }

  /** Puts zeroed read-write memory private to this process at [offset, offset+length) (no fd reaches it). */
  mapPrivate(offset: number, length: number): void {
    this.place(offset, length, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }

  /** Puts [fdOffset, fdOffset+length) of a file, shared, at [offset, offset+length). */
  mapFile(offset: number, length: number, fd: number, fdOffset = 0): void {
    this.place(offset, length, MAP_SHARED, fd, fdOffset);
  }

  /** Releases the whole range. Only safe if no view of `buffer` is used afterwards. */
  unmap(): void {
    if (this.record.state === "unmapped") return;
    check("munmap", libc.munmap(this.record.pointer, this.length));
    this.record.state = "unmapped";
    collector.unregister(this.record);
  }

  private place(offset: number, length: number, flags: number, fd: number, fdOffset: number): void {
    if (this.record.state !== "mapped") throw new SysError("mmap(MAP_FIXED)", 22, "range unmapped");
    if (offset < 0 || length <= 0 || offset % 4096 || length % 4096 || offset + length > this.length)
      throw new SysError("mmap(MAP_FIXED)", 22, `piece [${offset}, +${length}) outside the range`);
    const at = this.address + BigInt(offset);
    const p = mmapAt(at, length, PROT_READ | PROT_WRITE, flags | MAP_FIXED, fd, fdOffset);
    if (p === null || addressOf(p) !== at) throw new SysError("mmap(MAP_FIXED)", errno());
  }
}
