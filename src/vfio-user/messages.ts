/**
 * Payload codecs for every vfio-user message (the part after the 16-byte header),
 * one encode/decode pair per structure, with the layouts of the spec. Decoders
 * validate sizes and reserved fields and throw VfioUserError(EINVAL) on a
 * malformed payload. REGION_READ/WRITE, on the trap path, are coded in place
 * at fixed offsets of the connection's native buffers into a reused object, so
 * a trapped access allocates nothing.
 */
import {
  DMA_UNMAP_FLAG_ALL,
  DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  IRQ_SET_ACTION_TYPE_MASK,
  IRQ_SET_DATA_BOOL,
  IRQ_SET_DATA_EVENTFD,
  IRQ_SET_DATA_NONE,
  IRQ_SET_DATA_TYPE_MASK,
  REGION_INFO_CAP_SPARSE_MMAP,
  REGION_INFO_FLAG_CAPS,
  REGION_INFO_CAP_TYPE,
} from "./constants.js";
import { Errno, VfioUserError, invalid } from "./errors.js";

/** A bounds-checked little cursor over a payload. */
export class PayloadReader {
  private pos = 0;
  constructor(
    private readonly view: DataView,
    private readonly base: number,
    readonly length: number,
  ) {}

  get remaining(): number {
    return this.length - this.pos;
  }
  get position(): number {
    return this.pos;
  }

  private need(n: number, what: string): number {
    if (this.pos + n > this.length) throw invalid(`payload too short for ${what}`);
    const at = this.base + this.pos;
    this.pos += n;
    return at;
  }
  u8(what: string): number {
    return this.view.getUint8(this.need(1, what));
  }
  u16(what: string): number {
    return this.view.getUint16(this.need(2, what), true);
  }
  u32(what: string): number {
    return this.view.getUint32(this.need(4, what), true);
  }
  u64(what: string): bigint {
    return this.view.getBigUint64(this.need(8, what), true);
  }
  /** A u64 that must fit a JS number exactly (sizes, offsets within regions). */
  u64n(what: string): number {
    const v = this.u64(what);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what} too large`);
    return Number(v);
  }
  bytes(n: number, what: string): Uint8Array {
    const at = this.need(n, what);
    return new Uint8Array(this.view.buffer, this.view.byteOffset + at, n);
  }
  skipTo(offset: number, what: string): void {
    if (offset < this.pos || offset > this.length) throw invalid(`bad offset for ${what}`);
    this.pos = offset;
  }
}

/** An appending writer over a payload area of a send buffer. */
export class PayloadWriter {
  private pos = 0;
  constructor(
    private readonly view: DataView,
    private readonly base: number,
    private readonly capacity: number,
  ) {}
  get length(): number {
    return this.pos;
  }
  private take(n: number): number {
    if (this.pos + n > this.capacity) throw invalid("reply does not fit the message buffer");
    const at = this.base + this.pos;
    this.pos += n;
    return at;
  }
  u8(v: number): this {
    this.view.setUint8(this.take(1), v);
    return this;
  }
  u16(v: number): this {
    this.view.setUint16(this.take(2), v, true);
    return this;
  }
  u32(v: number): this {
    this.view.setUint32(this.take(4), v >>> 0, true);
    return this;
  }
  u64(v: number | bigint): this {
    this.view.setBigUint64(this.take(8), BigInt(v), true);
    return this;
  }
  bytes(b: Uint8Array): this {
    const at = this.take(b.length);
    new Uint8Array(this.view.buffer, this.view.byteOffset + at, b.length).set(b);
    return this;
  }
  /** Reserves n bytes and returns a view of them to fill in place. */
  reserve(n: number): Uint8Array {
    const at = this.take(n);
    return new Uint8Array(this.view.buffer, this.view.byteOffset + at, n);
  }
  patchU32(offset: number, v: number): void {
    this.view.setUint32(this.base + offset, v >>> 0, true);
  }
}

// ---- VERSION -------------------------------------------------------------

export interface VersionPayload {
  readonly major: number;
  readonly minor: number;
  /** The JSON text (without its NUL), if any. */
  readonly json?: string;
}

export function encodeVersion(w: PayloadWriter, v: VersionPayload): void {
  w.u16(v.major).u16(v.minor);
  if (v.json !== undefined) {
    w.bytes(Buffer.from(v.json, "utf8"));
    w.u8(0);
  }
}

export function decodeVersion(r: PayloadReader): VersionPayload {
  const major = r.u16("version major");
  const minor = r.u16("version minor");
  if (r.remaining === 0) return { major, minor };
  const raw = r.bytes(r.remaining, "version data");
  const end = raw.indexOf(0);
  if (end < 0) throw invalid("version data is not NUL-terminated");
  return { major, minor, json: Buffer.from(raw.buffer, raw.byteOffset, end).toString("utf8") };
}

// ---- DMA_MAP / DMA_UNMAP -------------------------------------------------

export interface DmaMapRequest {
  readonly flags: number;
  readonly offset: bigint;
  readonly address: bigint;
  readonly size: bigint;
}
export const DMA_MAP_SIZE = 32;

export function encodeDmaMap(w: PayloadWriter, m: DmaMapRequest): void {
  w.u32(DMA_MAP_SIZE).u32(m.flags).u64(m.offset).u64(m.address).u64(m.size);
}

export function decodeDmaMap(r: PayloadReader): DmaMapRequest {
  const argsz = r.u32("argsz");
  if (argsz !== DMA_MAP_SIZE || r.length !== DMA_MAP_SIZE) throw invalid(`DMA_MAP argsz ${argsz}`);
  const flags = r.u32("flags");
  if (flags & ~3) throw invalid(`DMA_MAP flags 0x${flags.toString(16)}`);
  return { flags, offset: r.u64("offset"), address: r.u64("address"), size: r.u64("size") };
}

export interface DmaUnmapRequest {
  readonly argsz: number;
  readonly flags: number;
  readonly address: bigint;
  readonly size: bigint;
  /** With DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: the bitmap's page size and byte size. */
  readonly bitmap?: { readonly pgsize: bigint; readonly size: number };
}
export const DMA_UNMAP_SIZE = 24;
export const DMA_BITMAP_SIZE = 16;

export function encodeDmaUnmap(w: PayloadWriter, m: DmaUnmapRequest): void {
  w.u32(m.argsz).u32(m.flags).u64(m.address).u64(m.size);
  if (m.bitmap) w.u64(m.bitmap.pgsize).u64(m.bitmap.size);
}

/**
 * `maxArgsz` bounds argsz (the server's max_data_xfer_size, as libvfio-user):
 * a client cannot announce a reply larger than any transfer it negotiated.
 */
export function decodeDmaUnmap(r: PayloadReader, maxArgsz = 0xffffffff): DmaUnmapRequest {
  const argsz = r.u32("argsz");
  if (argsz > maxArgsz) throw invalid(`DMA_UNMAP argsz ${argsz} exceeds ${maxArgsz}`);
  const flags = r.u32("flags");
  if (flags & ~(DMA_UNMAP_FLAG_ALL | DMA_UNMAP_FLAG_GET_DIRTY_BITMAP))
    throw invalid(`DMA_UNMAP flags 0x${flags.toString(16)}`);
  if (flags & DMA_UNMAP_FLAG_ALL && flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP)
    throw invalid("DMA_UNMAP cannot unmap all and return a dirty bitmap");
  const address = r.u64("address");
  const size = r.u64("size");
  if (flags & DMA_UNMAP_FLAG_ALL && (address !== 0n || size !== 0n))
    throw invalid("DMA_UNMAP of all mappings must have address and size 0");
  if (!(flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP)) {
    if (r.remaining !== 0) throw invalid("DMA_UNMAP payload has trailing bytes");
    if (argsz < DMA_UNMAP_SIZE) throw invalid(`DMA_UNMAP argsz ${argsz}`);
    return { argsz, flags, address, size };
  }
  const pgsize = r.u64("bitmap pgsize");
  const bitmapSize = r.u64n("bitmap size");
  if (argsz < DMA_UNMAP_SIZE + DMA_BITMAP_SIZE + bitmapSize)
    throw invalid("DMA_UNMAP argsz too small for bitmap");
  return { argsz, flags, address, size, bitmap: { pgsize, size: bitmapSize } };
}

// ---- DEVICE_GET_INFO -----------------------------------------------------

export interface DeviceInfo {
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
}
export const DEVICE_INFO_SIZE = 16;

export function encodeDeviceInfo(w: PayloadWriter, argsz: number, info: DeviceInfo): void {
  w.u32(argsz).u32(info.flags).u32(info.numRegions).u32(info.numIrqs);
}

/** The request is only an argsz (and zeroed fields): the whole struct. */
export function decodeDeviceInfoRequest(r: PayloadReader): { argsz: number } {
  const argsz = r.u32("argsz");
  if (argsz < DEVICE_INFO_SIZE || r.length !== DEVICE_INFO_SIZE) throw invalid(`GET_INFO argsz ${argsz}`);
  return { argsz };
}

export function decodeDeviceInfo(r: PayloadReader): DeviceInfo & { argsz: number } {
  const argsz = r.u32("argsz");
  return { argsz, flags: r.u32("flags"), numRegions: r.u32("num_regions"), numIrqs: r.u32("num_irqs") };
}

// ---- DEVICE_GET_REGION_INFO ---------------------------------------------

export interface SparseMmapArea {
  readonly offset: number;
  readonly size: number;
}

export interface RegionInfo {
  readonly index: number;
  readonly flags: number;
  readonly size: number;
  /** The mmap() offset into the region's fd (when mappable). */
  readonly offset: number;
  /** Only part of the region may be mapped: these areas, relative to `offset`. */
  readonly sparseMmap?: readonly SparseMmapArea[];
  /** VFIO_REGION_INFO_CAP_TYPE. */
  readonly type?: { readonly type: number; readonly subtype: number };
}
export const REGION_INFO_SIZE = 32;

export function encodeRegionInfoRequest(w: PayloadWriter, argsz: number, index: number): void {
  w.u32(argsz).u32(0).u32(index).u32(0).u64(0).u64(0);
}

export function decodeRegionInfoRequest(r: PayloadReader): { argsz: number; index: number } {
  const argsz = r.u32("argsz");
  r.u32("flags");
  const index = r.u32("index");
  if (argsz < REGION_INFO_SIZE) throw invalid(`GET_REGION_INFO argsz ${argsz}`);
  return { argsz, index };
}

/** Size of the region info with its capability chain. */
export function regionInfoFullSize(info: RegionInfo): number {
  let size = REGION_INFO_SIZE;
  if (info.sparseMmap) size += 8 + 8 + info.sparseMmap.length * 16;
  if (info.type) size += 8 + 8;
  return size;
}

/**
 * Writes the region info; the capability chain only if it fits in `argsz`
 * (the reply's argsz still tells the full size, so the client can ask again).
 */
export function encodeRegionInfo(w: PayloadWriter, argsz: number, info: RegionInfo): void {
  const full = regionInfoFullSize(info);
  const withCaps = full > REGION_INFO_SIZE && argsz >= full;
  // FLAG_CAPS only when the chain is in this reply: QEMU refuses CAPS with a
  // cap_offset of 0. A short reply still tells the full size in argsz.
  let flags = info.flags & ~REGION_INFO_FLAG_CAPS;
  if (withCaps) flags |= REGION_INFO_FLAG_CAPS;
  w.u32(full)
    .u32(flags)
    .u32(info.index)
    .u32(withCaps ? REGION_INFO_SIZE : 0)
    .u64(info.size)
    .u64(info.offset);
  if (!withCaps) return;
  if (info.sparseMmap) {
    const capSize = 16 + info.sparseMmap.length * 16;
    const next = info.type ? REGION_INFO_SIZE + capSize : 0;
    w.u16(REGION_INFO_CAP_SPARSE_MMAP).u16(1).u32(next);
    w.u32(info.sparseMmap.length).u32(0);
    for (const a of info.sparseMmap) w.u64(a.offset).u64(a.size);
  }
  if (info.type) {
    w.u16(REGION_INFO_CAP_TYPE).u16(1).u32(0);
    w.u32(info.type.type).u32(info.type.subtype);
  }
}

export function decodeRegionInfo(r: PayloadReader): RegionInfo & { argsz: number; hasCaps: boolean } {
  const argsz = r.u32("argsz");
  const flags = r.u32("flags");
  const index = r.u32("index");
  const capOffset = r.u32("cap_offset");
  const size = r.u64n("size");
  const offset = r.u64n("offset");
  let sparseMmap: SparseMmapArea[] | undefined;
  let type: { type: number; subtype: number } | undefined;
  let next = capOffset;
  const seen = new Set<number>();
  while (next !== 0) {
    if (seen.has(next) || next < REGION_INFO_SIZE)
      throw invalid("region capability chain loops or points back");
    seen.add(next);
    r.skipTo(next, "capability");
    const id = r.u16("cap id");
    r.u16("cap version");
    next = r.u32("cap next");
    if (id === REGION_INFO_CAP_SPARSE_MMAP) {
      const n = r.u32("nr_areas");
      r.u32("reserved");
      if (n * 16 > r.remaining) throw invalid("sparse mmap areas exceed the payload");
      sparseMmap = [];
      for (let i = 0; i < n; i++)
        sparseMmap.push({ offset: r.u64n("area offset"), size: r.u64n("area size") });
    } else if (id === REGION_INFO_CAP_TYPE) {
      type = { type: r.u32("type"), subtype: r.u32("subtype") };
    }
  }
  return {
    argsz,
    flags,
    index,
    size,
    offset,
    hasCaps: capOffset !== 0,
    ...(sparseMmap ? { sparseMmap } : {}),
    ...(type ? { type } : {}),
  };
}

// ---- DEVICE_GET_REGION_IO_FDS -------------------------------------------

export interface IoFdSubRegion {
  readonly offset: number;
  readonly size: number;
  readonly fdIndex: number;
  readonly type: number;
  readonly flags: number;
  /** datamatch (ioeventfd) or user_data (ioregionfd). */
  readonly data: bigint;
}
export const IO_FDS_HEADER_SIZE = 16;
export const IO_FD_SUBREGION_SIZE = 40;

export function encodeIoFdsRequest(w: PayloadWriter, argsz: number, index: number): void {
  w.u32(argsz).u32(0).u32(index).u32(0);
}

export function decodeIoFdsRequest(r: PayloadReader): { argsz: number; index: number } {
  const argsz = r.u32("argsz");
  const flags = r.u32("flags");
  const index = r.u32("index");
  const count = r.u32("count");
  if (flags !== 0 || count !== 0) throw invalid("GET_REGION_IO_FDS flags and count must be zero");
  if (argsz < IO_FDS_HEADER_SIZE) throw invalid(`GET_REGION_IO_FDS argsz ${argsz}`);
  return { argsz, index };
}

export function encodeIoFds(
  w: PayloadWriter,
  argsz: number,
  index: number,
  subs: readonly IoFdSubRegion[],
): void {
  const full = IO_FDS_HEADER_SIZE + subs.length * IO_FD_SUBREGION_SIZE;
  w.u32(full).u32(0).u32(index).u32(subs.length);
  if (argsz < full) return;
  for (const s of subs)
    w.u64(s.offset).u64(s.size).u32(s.fdIndex).u32(s.type).u32(s.flags).u32(0).u64(s.data);
}

export function decodeIoFds(r: PayloadReader): { argsz: number; index: number; subRegions: IoFdSubRegion[] } {
  const argsz = r.u32("argsz");
  r.u32("flags");
  const index = r.u32("index");
  const count = r.u32("count");
  const subRegions: IoFdSubRegion[] = [];
  if (r.remaining >= count * IO_FD_SUBREGION_SIZE) {
    for (let i = 0; i < count; i++) {
      const offset = r.u64n("offset");
      const size = r.u64n("size");
      const fdIndex = r.u32("fd_index");
      const type = r.u32("type");
      const flags = r.u32("flags");
      r.u32("padding");
      subRegions.push({ offset, size, fdIndex, type, flags, data: r.u64("data") });
    }
  }
  return { argsz, index, subRegions };
}

// ---- DEVICE_GET_IRQ_INFO -------------------------------------------------

export interface IrqInfo {
  readonly index: number;
  readonly flags: number;
  readonly count: number;
}
export const IRQ_INFO_SIZE = 16;

export function encodeIrqInfoRequest(w: PayloadWriter, index: number): void {
  w.u32(IRQ_INFO_SIZE).u32(0).u32(index).u32(0);
}

export function decodeIrqInfoRequest(r: PayloadReader): { argsz: number; index: number } {
  if (r.length !== IRQ_INFO_SIZE) throw invalid("GET_IRQ_INFO payload size");
  const argsz = r.u32("argsz");
  r.u32("flags");
  const index = r.u32("index");
  r.u32("count");
  if (argsz < IRQ_INFO_SIZE) throw invalid(`GET_IRQ_INFO argsz ${argsz}`);
  return { argsz, index };
}

export function encodeIrqInfo(w: PayloadWriter, info: IrqInfo): void {
  w.u32(IRQ_INFO_SIZE).u32(info.flags).u32(info.index).u32(info.count);
}

export function decodeIrqInfo(r: PayloadReader): IrqInfo {
  r.u32("argsz");
  return { flags: r.u32("flags"), index: r.u32("index"), count: r.u32("count") };
}

// ---- DEVICE_SET_IRQS -----------------------------------------------------

export interface SetIrqsRequest {
  readonly flags: number;
  readonly index: number;
  readonly start: number;
  readonly count: number;
  /** DATA_BOOL: one byte per sub-index. */
  readonly bools?: Uint8Array;
}
export const SET_IRQS_SIZE = 20;

export function encodeSetIrqs(w: PayloadWriter, s: SetIrqsRequest): void {
  const data = s.bools ? s.bools.length : 0;
  w.u32(SET_IRQS_SIZE + data)
    .u32(s.flags)
    .u32(s.index)
    .u32(s.start)
    .u32(s.count);
  if (s.bools) w.bytes(s.bools);
}

/** Decodes and checks the flag combination; `fdCount` is how many fds came with it. */
export function decodeSetIrqs(r: PayloadReader, fdCount: number): SetIrqsRequest {
  const argsz = r.u32("argsz");
  const flags = r.u32("flags");
  const index = r.u32("index");
  const start = r.u32("start");
  const count = r.u32("count");
  const dataType = flags & IRQ_SET_DATA_TYPE_MASK;
  const action = flags & IRQ_SET_ACTION_TYPE_MASK;
  if (flags & ~(IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK)) throw invalid("SET_IRQS unknown flags");
  if (popcount(dataType) !== 1 || popcount(action) !== 1)
    throw invalid("SET_IRQS needs exactly one data type and one action");
  if (start + count > 0xffffffff) throw invalid("SET_IRQS start + count overflows");
  if (dataType === IRQ_SET_DATA_BOOL) {
    if (argsz !== SET_IRQS_SIZE + count || r.remaining !== count) throw invalid("SET_IRQS bool data size");
    if (fdCount !== 0) throw invalid("SET_IRQS with bool data carries no fds");
    return { flags, index, start, count, bools: r.bytes(count, "bools") };
  }
  if (r.remaining !== 0) throw invalid("SET_IRQS payload has trailing bytes");
  if (dataType === IRQ_SET_DATA_EVENTFD) {
    if (fdCount !== 0 && fdCount !== count)
      throw invalid(`SET_IRQS expects ${count} eventfds, got ${fdCount}`);
  } else if (dataType === IRQ_SET_DATA_NONE && fdCount !== 0) {
    throw invalid("SET_IRQS with no data carries no fds");
  }
  if (argsz < SET_IRQS_SIZE) throw invalid(`SET_IRQS argsz ${argsz}`);
  return { flags, index, start, count };
}

function popcount(v: number): number {
  let n = 0;
  for (; v; v &= v - 1) n++;
  return n;
}

// ---- REGION_READ / REGION_WRITE / DMA_READ / DMA_WRITE ------------------

export const REGION_ACCESS_SIZE = 16; // offset u64, region u32, count u32
export const DMA_ACCESS_SIZE = 16; // address u64, count u64
export const DMA_WRITE_REPLY_SIZE = 12; // address u64, count u32

/** The fixed fields of REGION_READ/REGION_WRITE (request and reply); reused, never allocated per message. */
export class RegionAccess {
  offset = 0;
  region = 0;
  count = 0;
}

/** A u64 offset read without a BigInt; offsets past 2^53 are refused. */
export function u64AsNumber(v: DataView, at: number): number {
  const lo = v.getUint32(at, true);
  const hi = v.getUint32(at + 4, true);
  if (hi > 0x1fffff) throw invalid("offset too large");
  return hi * 0x100000000 + lo;
}

/**
 * Decodes the fixed part of a REGION_READ/WRITE at `at` of a buffer into `into`.
 * `dataLength` is what follows the fixed part: 0 for a read request, `count` for
 * a write; `maxCount` is the negotiated transfer limit.
 */
export function decodeRegionAccess(
  v: DataView,
  at: number,
  payloadLength: number,
  isWrite: boolean,
  maxCount: number,
  into: RegionAccess,
): RegionAccess {
  const what = isWrite ? "REGION_WRITE" : "REGION_READ";
  if (isWrite ? payloadLength < REGION_ACCESS_SIZE : payloadLength !== REGION_ACCESS_SIZE)
    throw invalid(`${what} payload size`);
  into.offset = u64AsNumber(v, at);
  into.region = v.getUint32(at + 8, true);
  into.count = v.getUint32(at + 12, true);
  if (into.count === 0 || into.count > maxCount) throw invalid(`${what} count ${into.count}`);
  if (isWrite && into.count !== payloadLength - REGION_ACCESS_SIZE)
    throw invalid(`${what} count ${into.count}`);
  return into;
}

/** Writes the fixed part of a REGION_READ/WRITE at `at` (the data, if any, goes after it). */
export function encodeRegionAccess(
  v: DataView,
  at: number,
  offset: number,
  region: number,
  count: number,
): void {
  v.setUint32(at, offset % 0x100000000, true);
  v.setUint32(at + 4, Math.floor(offset / 0x100000000), true);
  v.setUint32(at + 8, region, true);
  v.setUint32(at + 12, count, true);
}

/** DMA_READ / DMA_WRITE request (server → client); DMA_WRITE's data follows. */
export function encodeDmaAccess(w: PayloadWriter, address: bigint, count: number, data?: Uint8Array): void {
  w.u64(address).u64(count);
  if (data) w.bytes(data);
}

export interface DmaAccess {
  readonly address: bigint;
  readonly count: number;
  /** DMA_WRITE: the bytes to write (a view into the receive buffer). */
  readonly data?: Uint8Array;
}

export function decodeDmaAccess(r: PayloadReader, isWrite: boolean, maxCount: number): DmaAccess {
  const address = r.u64("address");
  const count = r.u64n("count");
  if (count > maxCount) throw invalid(`DMA count ${count}`);
  if (!isWrite) {
    if (r.remaining !== 0) throw invalid("DMA_READ payload size");
    return { address, count };
  }
  if (r.remaining !== count) throw invalid("DMA_WRITE payload size");
  return { address, count, data: r.bytes(count, "data") };
}

/** The data of a DMA_READ reply, checked against the count asked for. */
export function decodeDmaReadReply(r: PayloadReader, count: number): Uint8Array {
  r.u64("address");
  const got = r.u64n("count");
  if (got !== count || r.remaining !== count) throw new VfioUserError(Errno.EIO, "short DMA_READ reply");
  return r.bytes(count, "data");
}

export function encodeDmaWriteReply(w: PayloadWriter, address: bigint, count: number): void {
  w.u64(address).u32(count);
}

// ---- REGION_WRITE_MULTI --------------------------------------------------

export const WRITE_MULTI_ENTRY_SIZE = 24;
export const WRITE_MULTI_MAX = 16;

export interface SmallWrite {
  readonly offset: number;
  readonly region: number;
  readonly count: number;
  readonly data: Uint8Array;
}

export function encodeWriteMulti(w: PayloadWriter, writes: readonly SmallWrite[]): void {
  w.u64(writes.length);
  for (const wr of writes) {
    if (wr.count > 8 || wr.data.length !== wr.count)
      throw invalid("REGION_WRITE_MULTI entries carry 1 to 8 bytes");
    w.u64(wr.offset).u32(wr.region).u32(wr.count);
    const slot = w.reserve(8);
    slot.fill(0);
    slot.set(wr.data);
  }
}

export function decodeWriteMulti(r: PayloadReader): SmallWrite[] {
  const n = r.u64n("wr_cnt");
  if (n === 0 || n > WRITE_MULTI_MAX || r.remaining !== n * WRITE_MULTI_ENTRY_SIZE)
    throw invalid(`REGION_WRITE_MULTI with ${n} entries`);
  const out: SmallWrite[] = [];
  for (let i = 0; i < n; i++) {
    const offset = r.u64n("offset");
    const region = r.u32("region");
    const count = r.u32("count");
    if (count === 0 || count > 8) throw invalid(`REGION_WRITE_MULTI entry count ${count}`);
    out.push({ offset, region, count, data: r.bytes(8, "data").subarray(0, count) });
  }
  return out;
}

// ---- DEVICE_FEATURE ------------------------------------------------------

export interface FeatureRequest {
  readonly argsz: number;
  readonly flags: number;
  readonly data: Uint8Array;
}
export const FEATURE_HEADER_SIZE = 8;

export function encodeFeature(w: PayloadWriter, argsz: number, flags: number, data?: Uint8Array): void {
  w.u32(argsz).u32(flags);
  if (data) w.bytes(data);
}

export function decodeFeature(r: PayloadReader): FeatureRequest {
  const argsz = r.u32("argsz");
  const flags = r.u32("flags");
  if (argsz < FEATURE_HEADER_SIZE) throw invalid(`DEVICE_FEATURE argsz ${argsz}`);
  return { argsz, flags, data: r.bytes(r.remaining, "feature data") };
}

/** The reply: argsz (what it holds), the request's flags, then the feature's data. */
export function encodeFeatureReply(
  w: PayloadWriter,
  requestArgsz: number,
  flags: number,
  data: Uint8Array,
): void {
  if (FEATURE_HEADER_SIZE + data.length > requestArgsz) throw invalid("feature data larger than argsz");
  w.u32(FEATURE_HEADER_SIZE + data.length)
    .u32(flags)
    .bytes(data);
}

// The data of individual features (after argsz/flags), as <linux/vfio.h> lays them out.

function dataReader(data: Uint8Array): PayloadReader {
  return new PayloadReader(new DataView(data.buffer, data.byteOffset, data.byteLength), 0, data.length);
}

/** A u64 feature value (VFIO_DEVICE_FEATURE_MIGRATION's flags). */
export function encodeFeatureU64(value: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(value), true);
  return b;
}

/** vfio_device_feature_mig_state: device_state u32, data_fd s32 (unused in vfio-user: -1). */
export const MIG_STATE_SIZE = 8;

export function decodeMigDeviceState(data: Uint8Array): number {
  if (data.length < 4) throw invalid("MIG_DEVICE_STATE needs a state");
  return dataReader(data).u32("device_state");
}

export function encodeMigDeviceState(state: number): Uint8Array {
  const out = new Uint8Array(MIG_STATE_SIZE);
  const v = new DataView(out.buffer);
  v.setUint32(0, state, true);
  v.setInt32(4, -1, true);
  return out;
}

/** vfio_device_feature_dma_logging_control: page_size u64, num_ranges u32, reserved u32, ranges. */
export interface DmaLoggingControl {
  readonly pageSize: number;
  readonly ranges: readonly { readonly iova: bigint; readonly length: bigint }[];
}
export const DMA_LOGGING_CONTROL_SIZE = 16;
export const DMA_LOGGING_RANGE_SIZE = 16;
/** Most ranges one START may carry (the payload is bounded by the message size anyway). */
export const DMA_LOGGING_MAX_RANGES = 4096;

/**
 * The ranges are given inline here (vfio-user has no user pointers to follow):
 * num_ranges entries of { iova u64, length u64 } follow the fixed part.
 */
export function decodeDmaLoggingControl(data: Uint8Array): DmaLoggingControl {
  if (data.length < DMA_LOGGING_CONTROL_SIZE) throw invalid("DMA_LOGGING_START payload");
  const r = dataReader(data);
  const pageSize = r.u64n("page_size");
  const count = r.u32("num_ranges");
  r.u32("reserved");
  if (count > DMA_LOGGING_MAX_RANGES || r.remaining !== count * DMA_LOGGING_RANGE_SIZE)
    throw invalid("DMA_LOGGING_START ranges");
  const ranges: { iova: bigint; length: bigint }[] = [];
  for (let i = 0; i < count; i++) ranges.push({ iova: r.u64("iova"), length: r.u64("length") });
  return { pageSize, ranges };
}

/** vfio_device_feature_dma_logging_report: iova u64, length u64, page_size u64; the bitmap follows in the reply. */
export interface DmaLoggingReport {
  readonly iova: bigint;
  readonly length: number;
  readonly pageSize: number;
}
export const DMA_LOGGING_REPORT_SIZE = 24;

export function decodeDmaLoggingReport(data: Uint8Array): DmaLoggingReport {
  if (data.length !== DMA_LOGGING_REPORT_SIZE) throw invalid("DMA_LOGGING_REPORT payload");
  const r = dataReader(data);
  return { iova: r.u64("iova"), length: r.u64n("length"), pageSize: r.u64n("page_size") };
}

/** The REPORT reply's data: the request echoed, then the bitmap (u64 words, one bit per page). */
export function encodeDmaLoggingReport(request: Uint8Array, bitmap: Uint8Array): Uint8Array {
  const out = new Uint8Array(DMA_LOGGING_REPORT_SIZE + bitmap.length);
  out.set(request.subarray(0, DMA_LOGGING_REPORT_SIZE));
  out.set(bitmap, DMA_LOGGING_REPORT_SIZE);
  return out;
}

/** Bytes of a report bitmap for `length` bytes at `pageSize` (u64 words). */
export function dirtyBitmapSize(length: number, pageSize: number): number {
  return Math.ceil(Math.ceil(length / pageSize) / 64) * 8;
}

// ---- MIG_DATA_READ / MIG_DATA_WRITE --------------------------------------

export const MIG_DATA_HEADER_SIZE = 8;

/** MIG_DATA_READ request: argsz u32, size u32 (how much the client takes). */
export function decodeMigDataReadRequest(r: PayloadReader, maxSize: number): number {
  if (r.length !== MIG_DATA_HEADER_SIZE) throw invalid("MIG_DATA_READ payload size");
  const argsz = r.u32("argsz");
  const size = r.u32("size");
  if (size > maxSize || argsz < MIG_DATA_HEADER_SIZE + size) throw invalid(`MIG_DATA_READ size ${size}`);
  return size;
}

export function encodeMigData(w: PayloadWriter, data: Uint8Array): void {
  w.u32(MIG_DATA_HEADER_SIZE + data.length)
    .u32(data.length)
    .bytes(data);
}

/** MIG_DATA_WRITE request: argsz, size, then the data (a view into the receive buffer). */
export function decodeMigDataWrite(r: PayloadReader, maxSize: number): Uint8Array {
  r.u32("argsz");
  const size = r.u32("size");
  if (size !== r.remaining || size > maxSize) throw invalid(`MIG_DATA_WRITE size ${size}`);
  return r.bytes(size, "data");
}
