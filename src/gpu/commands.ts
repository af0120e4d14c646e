/**
 * Command encodings, Intel-style (gen8+ layouts with 64-bit addresses): the MI
 * commands of the command streamer and the two XY blits of the 2D engine.
 * Encoders here are used by every driver (native, guest) and by tests.
 */

export const CLIENT_MI = 0x0;
export const CLIENT_2D = 0x2;

export const MiOp = {
  NOOP: 0x00,
  USER_INTERRUPT: 0x02,
  BATCH_BUFFER_END: 0x0a,
  STORE_DATA_IMM: 0x20,
  LOAD_REGISTER_IMM: 0x22,
  FLUSH_DW: 0x26,
  BATCH_BUFFER_START: 0x31,
} as const;

export const BltOp = { XY_COLOR_BLT: 0x50, XY_SRC_COPY_BLT: 0x53 } as const;

export const client = (dw0: number) => dw0 >>> 29;
export const miOpcode = (dw0: number) => (dw0 >>> 23) & 0x3f;
export const bltOpcode = (dw0: number) => (dw0 >>> 22) & 0x7f;

/** Total dwords of a command, from its first dword (undefined: not a known command). */
export function commandLength(dw0: number): number | undefined {
  const c = client(dw0);
  if (c === CLIENT_MI) {
    switch (miOpcode(dw0)) {
      case MiOp.NOOP:
      case MiOp.USER_INTERRUPT:
      case MiOp.BATCH_BUFFER_END:
        return 1;
      case MiOp.STORE_DATA_IMM:
      case MiOp.LOAD_REGISTER_IMM:
      case MiOp.FLUSH_DW:
      case MiOp.BATCH_BUFFER_START:
        return (dw0 & 0xff) + 2;
      default:
        return undefined;
    }
  }
  if (c === CLIENT_2D) {
    const op = bltOpcode(dw0);
    if (op === BltOp.XY_COLOR_BLT || op === BltOp.XY_SRC_COPY_BLT) return (dw0 & 0xff) + 2;
  }
  return undefined;
}

const mi = (op: number, extra = 0) => ((op << 23) | extra) >>> 0;
const lo = (addr: number) => addr >>> 0;
const hi = (addr: number) => Math.floor(addr / 0x100000000) >>> 0;

export const MI_NOOP = 0;
export const MI_USER_INTERRUPT = mi(MiOp.USER_INTERRUPT);
export const MI_BATCH_BUFFER_END = mi(MiOp.BATCH_BUFFER_END);
/** DW0 bit 22 of MI_BATCH_BUFFER_START: second-level (nested) batch. */
export const BB_SECOND_LEVEL = 1 << 22;
/** MI_FLUSH_DW: post-sync "write immediate data", and notify (interrupt). */
export const FLUSH_POST_SYNC_WRITE = 1 << 14;
export const FLUSH_NOTIFY = 1 << 8;
/** XY blits: 32 bpp color depth and "write alpha and RGB". */
export const BLT_DEPTH_32 = 3 << 24;
export const BLT_WRITE_RGBA = 3 << 20;
export const ROP_PATCOPY = 0xf0;
export const ROP_SRCCOPY = 0xcc;

export function miStoreDataImm(address: number, value: number): number[] {
  return [mi(MiOp.STORE_DATA_IMM, (1 << 22) | 2), lo(address), hi(address), value >>> 0];
}

export function miLoadRegisterImm(pairs: readonly [register: number, value: number][]): number[] {
  const out = [mi(MiOp.LOAD_REGISTER_IMM, pairs.length * 2 - 1)];
  for (const [r, v] of pairs) out.push(r >>> 0, v >>> 0);
  return out;
}

export function miFlushDw(
  options: { store?: { address: number; value: number }; notify?: boolean } = {},
): number[] {
  const flags = (options.store ? FLUSH_POST_SYNC_WRITE : 0) | (options.notify ? FLUSH_NOTIFY : 0);
  const a = options.store?.address ?? 0;
  return [mi(MiOp.FLUSH_DW, flags | 2), lo(a), hi(a), (options.store?.value ?? 0) >>> 0];
}

export function miBatchBufferStart(address: number, secondLevel = false): number[] {
  return [mi(MiOp.BATCH_BUFFER_START, (secondLevel ? BB_SECOND_LEVEL : 0) | 1), lo(address), hi(address)];
}

export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

const xy = (x: number, y: number) => (((y & 0xffff) << 16) | (x & 0xffff)) >>> 0;

/** XY_COLOR_BLT: fill `rect` of a 32 bpp surface at `dst` with `color`. */
export function xyColorBlt(dst: number, pitch: number, rect: Rect, color: number): number[] {
  return [
    ((CLIENT_2D << 29) | (BltOp.XY_COLOR_BLT << 22) | BLT_WRITE_RGBA | 5) >>> 0,
    (BLT_DEPTH_32 | (ROP_PATCOPY << 16) | (pitch & 0xffff)) >>> 0,
    xy(rect.x, rect.y),
    xy(rect.x + rect.width, rect.y + rect.height),
    lo(dst),
    hi(dst),
    color >>> 0,
  ];
}

/** XY_SRC_COPY_BLT: copy a `dstRect`-sized area from (srcX, srcY) of `src` to `dst`. */
export function xySrcCopyBlt(
  dst: number,
  dstPitch: number,
  dstRect: Rect,
  src: number,
  srcPitch: number,
  srcX: number,
  srcY: number,
): number[] {
  return [
    ((CLIENT_2D << 29) | (BltOp.XY_SRC_COPY_BLT << 22) | BLT_WRITE_RGBA | 8) >>> 0,
    (BLT_DEPTH_32 | (ROP_SRCCOPY << 16) | (dstPitch & 0xffff)) >>> 0,
    xy(dstRect.x, dstRect.y),
    xy(dstRect.x + dstRect.width, dstRect.y + dstRect.height),
    lo(dst),
    hi(dst),
    xy(srcX, srcY),
    srcPitch & 0xffff,
    lo(src),
    hi(src),
  ];
}
