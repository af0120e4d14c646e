/**
 * The device's view of client (guest) memory: the windows the VMM mapped with
 * DMA_MAP, reached directly through mmap when it passed an fd and through
 * DMA_READ/DMA_WRITE messages when it did not; scatter-gather across windows;
 * permission, bus-master and bounds checks; dirty-page logging for migration.
 *
 * Unmapping never leaves the device a dangling pointer: the mapping is revoked
 * (its pages replaced by private zero pages) and views taken from it report
 * themselves stale, so a device that still holds one gets a clean error.
 */
import { Mapping, SysError, closeFd, fdSize, fileIdentity } from "../sys/index.js";
import {
  DMA_FLAG_READ,
  DMA_FLAG_WRITE,
  DMA_UNMAP_FLAG_ALL,
  DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  type DeviceSession,
  type DmaDone,
  type DmaPiece,
  type DmaLoggingControl,
  type DmaLoggingReport,
  type DmaMapRequest,
  type DmaUnmapRequest,
  Errno,
  VfioUserError,
  dirtyBitmapSize,
} from "../vfio-user/index.js";

/** A DMA that could not be done; carries the errno a command reply would use. */
export class DmaError extends VfioUserError {
  constructor(errno: number, message: string) {
    super(errno, message);
  }
}

export const DMA_PAGE_SIZE = 4096;
/** Largest dirty bitmap one REPORT returns (1 MiB covers 32 GiB of 4 KiB pages; it must fit one reply). */
export const MAX_DIRTY_BITMAP = 1 << 20;

function checkPageSize(pageSize: number): void {
  if (!Number.isSafeInteger(pageSize) || pageSize < 512 || !Number.isInteger(Math.log2(pageSize)))
    throw new DmaError(Errno.EINVAL, `page size ${pageSize}`);
}

/**
 * A window is mapped in pieces of at most this size: one JS view cannot span
 * more than 4 GiB, and a VMM may map a guest's whole RAM as one window.
 */
export const DMA_CHUNK_SIZE = 1 << 30;

class Window {
  /** One bit per 4 KiB page written while logging is on. */
  dirty: Uint8Array | undefined;
  revoked = false;
  /** A direct view was handed out: the pages may only go once views are declared gone. */
  viewed = false;
  /** The fd's file ("dev:ino") and offset, to recognise the same mapping made twice. */
  file: string | undefined;
  fdOffset = 0n;
  constructor(
    readonly address: bigint,
    readonly size: number,
    readonly flags: number,
    /** The fd-backed pieces, DMA_CHUNK_SIZE each (the last one shorter); none for message-based windows. */
    readonly chunks: readonly Mapping[],
  ) {}
  get end(): bigint {
    return this.address + BigInt(this.size);
  }
  get direct(): boolean {
    return this.chunks.length > 0;
  }
}

/** Direct access to part of one fd-backed window. Check `valid` (or call `check`) before trusting it. */
export class DmaView {
  constructor(
    private readonly window: Window,
    readonly address: bigint,
    readonly bytes: Uint8Array,
  ) {}
  get valid(): boolean {
    return !this.window.revoked;
  }
  check(): void {
    if (this.window.revoked)
      throw new DmaError(Errno.EFAULT, `DMA window at 0x${this.address.toString(16)} was unmapped`);
  }
}

export interface DmaOptions {
  /** The client connection, for windows mapped without an fd. */
  readonly session: () => DeviceSession | undefined;
  /** Bus mastering enabled in the command register (DMA is refused otherwise). */
  readonly busMaster: () => boolean;
  /** Most mappings at once (the client's own limit, DeviceSession.maxDmaMappings, applies too). */
  readonly maxMappings?: number;
}

export class DmaSpace {
  /** Bytes moved by read/write (copies through a mapping or DMA messages; direct views not counted). */
  bytesRead = 0;
  bytesWritten = 0;
  private windows: Window[] = [];
  /** Unmapped windows whose pages views may still point at: revoked now, unmapped by releaseStale(). */
  private stale: Window[] = [];
  private logging: { pageSize: number } | undefined;
  /** Runs before stale pages are unmapped, so holders of views can drop them (see releaseStale). */
  beforeReleaseStale: (() => void) | undefined;
  private readonly scratch: { window: Window; offset: number } = {
    window: undefined as unknown as Window,
    offset: 0,
  };

  constructor(private readonly options: DmaOptions) {}

  get mappingCount(): number {
    return this.windows.length;
  }

  /** Unmapped windows still waiting for releaseStale(). */
  get staleCount(): number {
    return this.stale.length;
  }

  map(req: DmaMapRequest, fd: number | undefined): void {
    const size = req.size;
    if (size === 0n || req.address % BigInt(DMA_PAGE_SIZE) !== 0n || size % BigInt(DMA_PAGE_SIZE) !== 0n)
      throw new DmaError(Errno.EINVAL, "DMA_MAP address and size must be non-zero multiples of 4 KiB");
    if (size > BigInt(Number.MAX_SAFE_INTEGER) || req.address + size > 1n << 64n)
      throw new DmaError(Errno.EINVAL, "DMA_MAP range too large");
    const limit = Math.min(
      this.options.maxMappings ?? 65535,
      this.options.session()?.maxDmaMappings ?? Infinity,
    );
    if (this.windows.length >= limit) throw new DmaError(Errno.ENOSPC, `too many DMA mappings (${limit})`);
    const end = req.address + size;
    const same = this.windows.find((w) => w.address === req.address && BigInt(w.size) === size);
    if (same) return this.remap(same, req, fd);
    if (this.windows.some((w) => req.address < w.end && w.address < end))
      throw new DmaError(Errno.EEXIST, "DMA_MAP overlaps an existing mapping");
    let chunks: Mapping[] = [];
    if (fd !== undefined) {
      if (req.offset % BigInt(DMA_PAGE_SIZE) !== 0n)
        throw new DmaError(Errno.EINVAL, "DMA_MAP fd offset not page aligned");
      // Touching pages past the end of the file would raise SIGBUS.
      if (req.offset + size > BigInt(fdSize(fd)))
        throw new DmaError(Errno.EINVAL, "DMA_MAP extends past the end of its file");
      chunks = mapChunks(fd, Number(size), Number(req.offset), req.flags);
    }
    const w = new Window(req.address, Number(size), req.flags, chunks);
    if (fd !== undefined) {
      w.fdOffset = req.offset;
      w.file = fileIdentity(fd);
      // The mapping keeps the file: the daemon holds no fd per window.
      closeFd(fd);
    }
    if (this.logging) w.dirty = new Uint8Array(Math.ceil(w.size / DMA_PAGE_SIZE / 8));
    this.windows.push(w);
    this.windows.sort((a, b) => (a.address < b.address ? -1 : 1));
  }

  /**
   * The same range mapped again (QEMU does so when its memory listener replays
   * a section): accepted, as the kernel and libvfio-user do, when it is the same
   * file at the same offset with the same access; anything else is EINVAL.
   */
  private remap(w: Window, req: DmaMapRequest, fd: number | undefined): void {
    const identity = fd === undefined ? undefined : fileIdentity(fd);
    if (req.flags !== w.flags || identity !== w.file || (fd !== undefined && req.offset !== w.fdOffset))
      throw new DmaError(Errno.EINVAL, "DMA_MAP of a mapped range with another file, offset or access");
    if (fd !== undefined) closeFd(fd);
  }

  /**
   * DMA_UNMAP: every mapping inside [address, address+size), or all of them;
   * returns the dirty bitmap if asked (then the range must be one mapping).
   * The spec asks for an exact match, but QEMU behind a vIOMMU unmaps whole IOVA
   * ranges, as kernel VFIO type1 allows: a range that holds no mapping is a
   * no-op, one that cuts a mapping in two is refused.
   */
  unmap(req: DmaUnmapRequest): Uint8Array | undefined {
    if (req.flags & DMA_UNMAP_FLAG_ALL) {
      for (const w of this.windows) this.release(w);
      this.windows = [];
      return undefined;
    }
    const end = req.address + req.size;
    if (req.size === 0n) throw new DmaError(Errno.EINVAL, "DMA_UNMAP of an empty range");
    const inside = this.windows.filter((w) => w.address >= req.address && w.end <= end);
    if (this.windows.some((w) => w.address < end && req.address < w.end && !inside.includes(w)))
      throw new DmaError(Errno.EINVAL, "DMA_UNMAP would cut a mapping in two");
    let bitmap: Uint8Array | undefined;
    if (req.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) {
      const w = inside[0];
      if (inside.length !== 1 || w!.address !== req.address || BigInt(w!.size) !== req.size)
        throw new DmaError(Errno.ENOENT, "a dirty bitmap needs the range of exactly one mapping");
      if (!this.logging || !w!.dirty) throw new DmaError(Errno.EINVAL, "dirty logging is not on");
      const pageSize = Number(req.bitmap!.pgsize);
      checkPageSize(pageSize);
      if (req.bitmap!.size !== dirtyBitmapSize(w!.size, pageSize))
        throw new DmaError(
          Errno.EINVAL,
          `bitmap of ${req.bitmap!.size} bytes for ${w!.size} bytes of pages of ${pageSize}`,
        );
      bitmap = new Uint8Array(req.bitmap!.size);
      this.reportWindow(w!, w!.address, w!.size, pageSize, bitmap);
    }
    for (const w of inside) this.release(w);
    this.windows = this.windows.filter((w) => !inside.includes(w));
    return bitmap;
  }

  /** The client is gone: everything it mapped goes with it. */
  unmapAll(): void {
    this.unmap({ argsz: 24, flags: DMA_UNMAP_FLAG_ALL, address: 0n, size: 0n });
  }

  read(address: bigint, out: Uint8Array): void {
    this.transfer(address, out, false);
  }

  write(address: bigint, data: Uint8Array): void {
    this.transfer(address, data, true);
  }

  /**
   * Reads guest memory without waiting for the client: fd-backed parts are
   * copied now, the parts the client serves go out as one batch of pipelined
   * DMA_READs (contiguous ranges in as few messages as the transfer size
   * allows, not one per page), and `done` runs on the serving loop when all are
   * in — or with the error (ETIMEDOUT after the reply timeout, or `timeoutMs`
   * if shorter). `out` must stay untouched until then. Checks (bus master,
   * mapping, permission) throw now.
   */
  readAsync(address: bigint, out: Uint8Array, done: DmaDone, timeoutMs?: number): void {
    this.transferAsync([{ address, bytes: out }], false, done, timeoutMs);
  }

  /** The same for writes (dirty pages are marked when the batch is sent). */
  writeAsync(address: bigint, data: Uint8Array, done: DmaDone, timeoutMs?: number): void {
    this.transferAsync([{ address, bytes: data }], true, done, timeoutMs);
  }

  /** readAsync over a scatter-gather list: every piece is checked first, then one batch goes out. */
  readPiecesAsync(pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void {
    this.transferAsync(pieces, false, done, timeoutMs);
  }

  /** writeAsync over a scatter-gather list. */
  writePiecesAsync(pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void {
    this.transferAsync(pieces, true, done, timeoutMs);
  }

  /** True if the page at `address` is in a window the client shared by fd (a direct view exists). */
  isDirect(address: bigint): boolean {
    const w = this.find(address);
    return w !== undefined && w.direct;
  }

  /** True if the page at `address` is in a window the client serves by messages (no fd). */
  isMessageBased(address: bigint): boolean {
    const w = this.find(address);
    return w !== undefined && !w.direct;
  }

  /** Some window is reached only by DMA messages. */
  get hasMessageWindows(): boolean {
    return this.windows.some((w) => !w.direct);
  }

  private find(address: bigint): Window | undefined {
    for (const w of this.windows) if (address >= w.address && address < w.end) return w;
    return undefined;
  }

  private transferAsync(
    pieces: readonly DmaPiece[],
    isWrite: boolean,
    done: DmaDone,
    timeoutMs: number | undefined,
  ): void {
    this.checkBusMaster();
    // Everything is checked before anything moves: a bad piece fails the whole list at once.
    const remote: DmaPiece[] = [];
    const local: DmaPiece[] = [];
    for (const piece of pieces) {
      const { address, bytes } = piece;
      let at = 0;
      while (at < bytes.length) {
        const { window: w, offset } = this.locate(address + BigInt(at), 1);
        this.checkPermission(w, isWrite);
        const n = Math.min(bytes.length - at, w.size - offset);
        const part = { address: address + BigInt(at), bytes: bytes.subarray(at, at + n) };
        if (w.direct) local.push(part);
        else {
          remote.push(part);
          if (isWrite) this.markDirty(w, offset, n);
        }
        at += n;
      }
    }
    for (const p of local) this.transfer(p.address, p.bytes, isWrite);
    if (remote.length === 0) return done();
    const session = this.options.session();
    if (!session) throw new DmaError(Errno.ENOTCONN, "no client to carry DMA messages");
    let bytes = 0;
    for (const p of remote) bytes += p.bytes.length;
    if (isWrite) this.bytesWritten += bytes;
    else this.bytesRead += bytes;
    if (isWrite) session.dmaWriteAsync(remote, done, timeoutMs);
    else session.dmaReadAsync(remote, done, timeoutMs);
  }

  /** Reads a scatter-gather list into one buffer, in order. */
  readList(list: readonly { address: bigint; length: number }[], out: Uint8Array): void {
    let at = 0;
    for (const e of list) {
      this.transfer(e.address, out.subarray(at, at + e.length), false);
      at += e.length;
    }
  }

  /** Writes one buffer across a scatter-gather list, in order. */
  writeList(list: readonly { address: bigint; length: number }[], data: Uint8Array): void {
    let at = 0;
    for (const e of list) {
      this.transfer(e.address, data.subarray(at, at + e.length), true);
      at += e.length;
    }
  }

  /**
   * Direct access to guest memory (fd-backed windows only) for engines that work
   * in place. A view for writing marks its pages dirty when taken.
   */
  view(address: bigint, length: number, forWrite: boolean): DmaView {
    this.checkBusMaster();
    const { window: w, offset } = this.locate(address, length);
    if (!w.direct) throw new DmaError(Errno.EFAULT, "guest memory mapped without an fd has no direct view");
    this.checkPermission(w, forWrite);
    const chunk = w.chunks[Math.floor(offset / DMA_CHUNK_SIZE)]!;
    const at = offset % DMA_CHUNK_SIZE;
    if (at + length > chunk.length)
      throw new DmaError(
        Errno.EFAULT,
        `a direct view of ${length} bytes at 0x${address.toString(16)} spans two pieces`,
      );
    if (forWrite) this.markDirty(w, offset, length);
    w.viewed = true;
    return new DmaView(w, address, chunk.bytes.subarray(at, at + length));
  }

  /**
   * Unmaps the windows that were unmapped while views of them may have been
   * held (until now their pages were revoked: zeros, no file behind them). The
   * caller declares that no view taken before this call is used after it;
   * `beforeReleaseStale` runs first so cached views can be dropped.
   */
  releaseStale(): void {
    if (this.stale.length === 0) return;
    this.beforeReleaseStale?.();
    for (const w of this.stale.splice(0)) for (const c of w.chunks) c.unmap();
  }

  // ---- dirty logging (DEVICE_FEATURE DMA_LOGGING_*) -----------------------

  /**
   * DMA_LOGGING_START, all or nothing: the page size and every range are checked
   * before logging changes. Ranges must lie in mapped windows; logging covers
   * every window (the ranges only bound what the VMM will ask to report).
   */
  startLogging(control: DmaLoggingControl): void {
    checkPageSize(control.pageSize);
    for (const r of control.ranges)
      if (r.length === 0n || !this.covered(r.iova, r.length))
        throw new DmaError(
          Errno.EINVAL,
          `logging range 0x${r.iova.toString(16)}+0x${r.length.toString(16)} is not mapped`,
        );
    const bitmaps = this.windows.map((w) => new Uint8Array(Math.ceil(w.size / DMA_PAGE_SIZE / 8)));
    this.logging = { pageSize: control.pageSize };
    this.windows.forEach((w, i) => (w.dirty = bitmaps[i]));
  }

  stopLogging(): void {
    this.logging = undefined;
    for (const w of this.windows) w.dirty = undefined;
  }

  get loggingActive(): boolean {
    return this.logging !== undefined;
  }

  /**
   * DMA_LOGGING_REPORT: the dirty bitmap (u64 words, one bit per pageSize) of
   * [iova, iova+length); reported pages are cleared. Everything is validated —
   * logging on, the page size, the range mapped, the bitmap within `room` and
   * within MAX_DIRTY_BITMAP — before the bitmap is allocated.
   */
  report(request: DmaLoggingReport, room: number): Uint8Array {
    const { iova, length, pageSize } = request;
    if (!this.logging) throw new DmaError(Errno.EINVAL, "dirty logging is not on");
    checkPageSize(pageSize);
    if (length === 0 || !this.covered(iova, BigInt(length)))
      throw new DmaError(
        Errno.EINVAL,
        `report range 0x${iova.toString(16)}+0x${length.toString(16)} is not mapped`,
      );
    const bytes = dirtyBitmapSize(length, pageSize);
    if (bytes > room) throw new DmaError(Errno.EINVAL, "argsz too small for the bitmap");
    if (bytes > MAX_DIRTY_BITMAP)
      throw new DmaError(Errno.E2BIG, `a ${bytes}-byte bitmap exceeds ${MAX_DIRTY_BITMAP}`);
    const out = new Uint8Array(bytes);
    for (const w of this.windows) {
      if (w.end <= iova || w.address >= iova + BigInt(length)) continue;
      this.reportWindow(w, iova, length, pageSize, out);
    }
    return out;
  }

  // ---- internals ----------------------------------------------------------

  /** ORs the dirty pages of `w` inside [iova, iova+length) into `out` and clears them. */
  private reportWindow(w: Window, iova: bigint, length: number, pageSize: number, out: Uint8Array): void {
    if (!w.dirty) return;
    const from = iova > w.address ? Number(iova - w.address) : 0;
    const to = Math.min(w.size, Number(iova + BigInt(length) - w.address));
    // Offset of the window's start from iova (negative when iova is inside the window).
    const base = Number(w.address - iova);
    const dirty = w.dirty;
    const firstPage = Math.floor(from / DMA_PAGE_SIZE);
    const endPage = Math.ceil(to / DMA_PAGE_SIZE);
    for (let page = firstPage; page < endPage; page++) {
      if (dirty[page >> 3] === 0) {
        page |= 7; // the whole byte is clean
        continue;
      }
      if (!(dirty[page >> 3]! & (1 << (page & 7)))) continue;
      dirty[page >> 3]! &= ~(1 << (page & 7));
      // A 4 KiB page sets every report bit it overlaps (several when pageSize is smaller).
      const start = base + page * DMA_PAGE_SIZE;
      const first = Math.floor(Math.max(start, 0) / pageSize);
      const last = Math.floor((start + DMA_PAGE_SIZE - 1) / pageSize);
      for (let bit = first; bit <= last && bit >> 3 < out.length; bit++) out[bit >> 3]! |= 1 << (bit & 7);
    }
  }

  /** True if every byte of [address, address+length) is in some window. */
  private covered(address: bigint, length: bigint): boolean {
    let at = address;
    const end = address + length;
    for (const w of this.windows) {
      if (w.end <= at) continue;
      if (w.address > at) return false;
      at = w.end;
      if (at >= end) return true;
    }
    return at >= end;
  }

  private transfer(address: bigint, bytes: Uint8Array, isWrite: boolean): void {
    this.checkBusMaster();
    let done = 0;
    while (done < bytes.length) {
      const at = address + BigInt(done);
      const { window: w, offset } = this.locate(at, 1);
      this.checkPermission(w, isWrite);
      let n: number;
      if (w.direct) {
        // Up to the end of this piece of the window.
        const piece = w.chunks[Math.floor(offset / DMA_CHUNK_SIZE)]!;
        const inPiece = offset % DMA_CHUNK_SIZE;
        n = Math.min(bytes.length - done, piece.length - inPiece);
        const part = bytes.subarray(done, done + n);
        if (isWrite) piece.bytes.set(part, inPiece);
        else part.set(piece.bytes.subarray(inPiece, inPiece + n));
      } else {
        n = Math.min(bytes.length - done, w.size - offset);
        const part = bytes.subarray(done, done + n);
        const session = this.options.session();
        if (!session) throw new DmaError(Errno.ENOTCONN, "no client to carry DMA messages");
        if (isWrite) session.dmaWrite(at, part);
        else session.dmaRead(at, part);
      }
      if (isWrite) this.markDirty(w, offset, n);
      done += n;
    }
    if (isWrite) this.bytesWritten += bytes.length;
    else this.bytesRead += bytes.length;
  }

  private locate(address: bigint, length: number): { window: Window; offset: number } {
    const s = this.scratch;
    for (const w of this.windows) {
      if (address >= w.address && address < w.end) {
        if (address + BigInt(length) > w.end)
          throw new DmaError(
            Errno.EFAULT,
            `DMA at 0x${address.toString(16)}+${length} crosses a window's end`,
          );
        s.window = w;
        s.offset = Number(address - w.address);
        return s;
      }
    }
    throw new DmaError(Errno.EFAULT, `no DMA mapping covers 0x${address.toString(16)}`);
  }

  private checkPermission(w: Window, isWrite: boolean): void {
    if (isWrite && !(w.flags & DMA_FLAG_WRITE))
      throw new DmaError(Errno.EPERM, "DMA write to a read-only mapping");
    if (!isWrite && !(w.flags & DMA_FLAG_READ))
      throw new DmaError(Errno.EPERM, "DMA read from a write-only mapping");
  }

  private checkBusMaster(): void {
    if (!this.options.busMaster()) throw new DmaError(Errno.EPERM, "bus mastering is disabled");
  }

  private markDirty(w: Window, offset: number, length: number): void {
    if (!w.dirty || length === 0) return;
    for (
      let p = Math.floor(offset / DMA_PAGE_SIZE);
      p <= Math.floor((offset + length - 1) / DMA_PAGE_SIZE);
      p++
    )
      w.dirty[p >> 3]! |= 1 << (p & 7);
  }

  /**
   * The last use of a window ended (DMA_UNMAP, the client gone): its pages are
   * unmapped now, unless a direct view of it was handed out — then they are
   * revoked (a late access reads zeros, never the file) and unmapped by the
   * next releaseStale().
   */
  private release(w: Window): void {
    w.revoked = true;
    if (!w.viewed) {
      for (const c of w.chunks) c.unmap();
      return;
    }
    for (const c of w.chunks) c.revoke();
    this.stale.push(w);
  }
}

/** Maps [offset, offset+size) of fd in DMA_CHUNK_SIZE pieces; all or nothing. */
function mapChunks(fd: number, size: number, offset: number, flags: number): Mapping[] {
  const chunks: Mapping[] = [];
  try {
    for (let at = 0; at < size; at += DMA_CHUNK_SIZE)
      chunks.push(
        Mapping.ofFd(fd, Math.min(DMA_CHUNK_SIZE, size - at), {
          offset: offset + at,
          readable: (flags & DMA_FLAG_READ) !== 0,
          writable: (flags & DMA_FLAG_WRITE) !== 0,
        }),
      );
  } catch (e) {
    for (const c of chunks) c.unmap();
    throw new DmaError(
      e instanceof SysError ? e.errno : Errno.EINVAL,
      `cannot mmap DMA region: ${String(e)}`,
    );
  }
  return chunks;
}
