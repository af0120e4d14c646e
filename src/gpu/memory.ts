/**
 * Graphics memory: the parent's local memory (private memory, with one memfd
 * per tenant slice that its VMM may mmap) and the GTT that maps graphics addresses (GMA) to
 * local-memory pages or to system-memory (DMA) pages that the owner supplies.
 * The engine reaches memory only through `GraphicsMemory`, which translates in
 * contiguous runs so fills and copies stay on TypedArray fill/copyWithin.
 */
import { GTT_SYSTEM, GTT_VALID, PAGE_SHIFT, PAGE_SIZE } from "../abi/index.js";
import { MgpuError } from "../base/index.js";
import { ComposedMapping, closeFd, createMemfd } from "../sys/index.js";
import { GpuError } from "./errors.js";

/** A piece of local memory backed by its own memfd: what one tenant's VMM may map, and nothing else. */
export interface LocalSlice {
  readonly offset: number;
  readonly size: number;
  /** A size-sealed memfd holding exactly this slice (mapped at fd offset 0). */
  readonly fd: number;
}

/**
 * The parent's local memory: one contiguous range the engine addresses, built
 * from separate memory objects. Everything starts as memory private to this
 * process (the host's reserve, the rings and shadow batches in it, unused
 * space): no fd reaches it. A tenant's slice is its own memfd placed over its
 * part of the range with MAP_FIXED; the fd is sealed against shrinking and
 * growing, so a VMM holding it can neither SIGBUS the daemon nor reach past
 * it. A detached slice turns back into zeroed private memory, and the next
 * tenant gets a fresh memfd: nothing of the old one is left to see.
 */
export class LocalMemory {
  readonly mapping: ComposedMapping;
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  private readonly slices = new Map<number, LocalSlice>();

  constructor(readonly size: number) {
    if (size % PAGE_SIZE !== 0 || size <= 0)
      throw new GpuError("EINVAL", "local memory size must be a positive multiple of 4 KiB");
    this.mapping = ComposedMapping.reserve(size);
    this.mapping.mapPrivate(0, size);
    this.bytes = this.mapping.bytes;
    this.words = new Uint32Array(this.mapping.buffer);
  }

  /** Backs [offset, offset+size) with a fresh, zeroed, size-sealed memfd. */
  attachSlice(offset: number, size: number): LocalSlice {
    if (offset < 0 || size <= 0 || offset % PAGE_SIZE || size % PAGE_SIZE || offset + size > this.size)
      throw new GpuError("EINVAL", `slice [0x${offset.toString(16)}, +0x${size.toString(16)}) invalid`);
    for (const s of this.slices.values())
      if (offset < s.offset + s.size && s.offset < offset + size)
        throw new GpuError("EBUSY", `slice at 0x${offset.toString(16)} overlaps one in use`);
    const fd = createMemfd(`mgpu-slice-${offset.toString(16)}`, size, { sealSize: true });
    try {
      this.mapping.mapFile(offset, size, fd);
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    const slice = { offset, size, fd };
    this.slices.set(offset, slice);
    return slice;
  }

  /** The slice that starts at `offset`. */
  sliceAt(offset: number): LocalSlice {
    const s = this.slices.get(offset);
    if (!s) throw new GpuError("ENOENT", `no slice at 0x${offset.toString(16)}`);
    return s;
  }

  /** Replaces a slice with zeroed private memory and closes our fd (a VMM's copy keeps only the old pages). */
  detachSlice(offset: number): void {
    const s = this.sliceAt(offset);
    this.mapping.mapPrivate(s.offset, s.size);
    this.slices.delete(offset);
    closeFd(s.fd);
  }

  close(): void {
    for (const s of this.slices.values()) closeFd(s.fd);
    this.slices.clear();
    this.mapping.unmap();
  }
}

/** System memory (a VM's or the host's) as the GTT's owner exposes it: one 4 KiB page at a time. */
export interface SystemMemory {
  /** The page at a page-aligned DMA address, or undefined if nothing is there. */
  page(address: bigint): Uint8Array | undefined;
  /**
   * The engine wrote [offset, offset+length) of the page at `address` (told
   * after every write to system memory, as an IOMMU's dirty tracking would be):
   * an owner that holds copies of guest pages writes back exactly those bytes.
   */
  wrote?(address: bigint, offset: number, length: number): void;
}

/** A graphics address that has no valid translation. */
export class GttFault extends MgpuError<"EGTTFAULT"> {
  constructor(readonly gma: number) {
    super("EGTTFAULT", `GTT fault at 0x${gma.toString(16)}`);
  }
}

export class Gtt {
  /** Entries as two 32-bit halves (no BigInt on the translation path). */
  readonly lo: Uint32Array;
  readonly hi: Uint32Array;
  /** Bumped on every change, so translation caches know when to forget. */
  generation = 0;

  constructor(readonly entries: number) {
    this.lo = new Uint32Array(entries);
    this.hi = new Uint32Array(entries);
  }

  /** Bytes of graphics address space the GTT covers. */
  get aperture(): number {
    return this.entries * PAGE_SIZE;
  }

  write(index: number, entry: bigint): void {
    if (index < 0 || index >= this.entries) throw new RangeError(`GTT index ${index}`);
    this.generation++;
    this.lo[index] = Number(entry & 0xffffffffn);
    this.hi[index] = Number((entry >> 32n) & 0xffffffffn);
  }

  read(index: number): bigint {
    return (BigInt(this.hi[index]!) << 32n) | BigInt(this.lo[index]!);
  }

  /** Writes both halves of an entry (the mediator's shadowing path). */
  set(index: number, lo: number, hi: number): void {
    this.generation++;
    this.lo[index] = lo >>> 0;
    this.hi[index] = hi >>> 0;
  }

  clear(first = 0, count = this.entries - first): void {
    this.generation++;
    this.lo.fill(0, first, first + count);
    this.hi.fill(0, first, first + count);
  }
}

/** Where a run of graphics memory lives: bytes[offset .. offset+length). */
export interface Run {
  bytes: Uint8Array;
  offset: number;
  length: number;
  local: boolean;
  /** For a system page: its DMA address (as the GTT holds it). */
  address: bigint;
}

export class GraphicsMemory {
  private system: SystemMemory | undefined;
  private readonly run: Run = { bytes: new Uint8Array(0), offset: 0, length: 0, local: true, address: 0n };
  private readonly scratch = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private staging = new Uint8Array(0);

  constructor(
    readonly local: LocalMemory,
    readonly gtt: Gtt,
  ) {}

  setSystemMemory(system: SystemMemory | undefined): void {
    this.system = system;
  }

  /**
   * Translates [gma, gma+length) as far as it stays contiguous in one backing
   * store (several local pages merge into one run). Throws GttFault.
   */
  resolve(gma: number, length: number): Run {
    if (gma < 0 || gma >= this.gtt.aperture) throw new GttFault(gma);
    const index = gma >>> PAGE_SHIFT;
    const lo = this.gtt.lo[index]!;
    if (!(lo & GTT_VALID)) throw new GttFault(gma);
    const within = gma & (PAGE_SIZE - 1);
    const run = this.run;
    if (lo & GTT_SYSTEM) {
      const address = (BigInt(this.gtt.hi[index]!) << 32n) | BigInt((lo & ~0xfff) >>> 0);
      const page = this.system?.page(address);
      if (!page) throw new GttFault(gma);
      run.bytes = page;
      run.offset = within;
      run.length = Math.min(length, PAGE_SIZE - within);
      run.local = false;
      run.address = address;
      return run;
    }
    const base = this.gtt.hi[index]! * 0x100000000 + ((lo & ~0xfff) >>> 0);
    if (base + PAGE_SIZE > this.local.size) throw new GttFault(gma);
    // Merge following pages while they continue the same local range.
    let span = PAGE_SIZE - within;
    let next = index + 1;
    let expect = base + PAGE_SIZE;
    while (span < length && next < this.gtt.entries) {
      const l = this.gtt.lo[next]!;
      if ((l & (GTT_VALID | GTT_SYSTEM)) !== GTT_VALID) break;
      if (
        this.gtt.hi[next]! * 0x100000000 + ((l & ~0xfff) >>> 0) !== expect ||
        expect + PAGE_SIZE > this.local.size
      )
        break;
      span += PAGE_SIZE;
      expect += PAGE_SIZE;
      next++;
    }
    run.bytes = this.local.bytes;
    run.offset = base + within;
    run.length = Math.min(length, span);
    run.local = true;
    return run;
  }

  /** One-page translation cache for dword reads (command fetch and scanning walk pages in order). */
  private cachePage = -1;
  private cacheWords: Uint32Array = new Uint32Array(0);
  /** Dword index of the cached page's first dword in cacheWords. */
  private cacheBase = 0;
  private cacheGeneration = -1;

  /** Drops the cached view of a system page (its mapping is about to go). */
  forgetSystemPages(): void {
    this.cachePage = -1;
    this.cacheWords = new Uint32Array(0);
  }

  read32(gma: number): number {
    if (gma >>> 12 === this.cachePage && this.cacheGeneration === this.gtt.generation && (gma & 3) === 0)
      return this.cacheWords[this.cacheBase + ((gma & 0xfff) >>> 2)]!;
    const r = this.resolve(gma, 4);
    const pageStart = r.offset - (gma & 0xfff);
    if ((r.offset & 3) === 0 && pageStart >= 0 && (r.bytes.byteOffset & 3) === 0) {
      // Local memory or a system page: cache the page's dwords until the GTT changes.
      this.cachePage = gma >>> 12;
      this.cacheWords = r.local
        ? this.local.words
        : new Uint32Array(r.bytes.buffer, r.bytes.byteOffset, r.bytes.length >>> 2);
      this.cacheBase = pageStart >>> 2;
      this.cacheGeneration = this.gtt.generation;
    }
    if (r.length < 4) return this.readSlow(gma, 4);
    const b = r.bytes;
    const o = r.offset;
    return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
  }

  write32(gma: number, value: number): void {
    this.scratchView.setUint32(0, value >>> 0, true);
    this.writeBytes(gma, this.scratch.subarray(0, 4));
  }

  writeBytes(gma: number, data: Uint8Array): void {
    for (let done = 0; done < data.length;) {
      const r = this.resolve(gma + done, data.length - done);
      r.bytes.set(data.subarray(done, done + r.length), r.offset);
      if (!r.local) this.system?.wrote?.(r.address, r.offset, r.length);
      done += r.length;
    }
  }

  readBytes(gma: number, out: Uint8Array): void {
    for (let done = 0; done < out.length;) {
      const r = this.resolve(gma + done, out.length - done);
      out.set(r.bytes.subarray(r.offset, r.offset + r.length), done);
      done += r.length;
    }
  }

  /** Fills `count` dwords at a dword-aligned gma with `value`. */
  fill32(gma: number, count: number, value: number): void {
    const bytes = count * 4;
    for (let done = 0; done < bytes;) {
      const r = this.resolve(gma + done, bytes - done);
      if (r.local && (r.offset & 3) === 0) {
        this.local.words.fill(value, r.offset >>> 2, (r.offset + r.length) >>> 2);
      } else {
        const v = new DataView(r.bytes.buffer, r.bytes.byteOffset + r.offset, r.length);
        for (let i = 0; i < r.length; i += 4) v.setUint32(i, value, true);
        if (!r.local) this.system?.wrote?.(r.address, r.offset, r.length);
      }
      done += r.length;
    }
  }

  /** Copies `length` bytes with memmove semantics (overlap-safe when ranges overlap). */
  copy(dst: number, src: number, length: number): void {
    const s = this.resolve(src, length);
    const sOffset = s.offset;
    const sLength = s.length;
    const sLocal = s.local;
    const d = this.resolve(dst, length);
    if (sLocal && d.local && sLength === length && d.length === length) {
      this.local.bytes.copyWithin(d.offset, sOffset, sOffset + length);
      return;
    }
    // Scattered or system memory: stage through a buffer, which is overlap-safe (kept: copies are a band at most).
    if (this.staging.length < length) this.staging = new Uint8Array(Math.max(length, 64 << 10));
    const staged = this.staging.subarray(0, length);
    this.readBytes(src, staged);
    this.writeBytes(dst, staged);
  }

  private readSlow(gma: number, n: number): number {
    this.readBytes(gma, this.scratch.subarray(0, n));
    return this.scratchView.getUint32(0, true);
  }
}
