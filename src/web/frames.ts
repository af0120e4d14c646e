/**
 * Scans vGPU displays out of the worker's own read-only mapping of the
 * parent's local memory, with the DISPI registers the daemon's thread handed
 * over: the same conversion the daemon's screenshots use (DisplayEngine), plus
 * a fast path for the common 32 bpp little-endian mode, and nearest-pixel
 * scaling for thumbnails (a pixel of the thumbnail is a pixel of the screen).
 */
import { DisplayEngine, type Frame, frameToPng } from "../gpu/index.js";
import type { DisplayState } from "./protocol.js";

/** Shown while a display is off, so viewers always have a picture (VNC needs a size). */
export const BLANK = { width: 640, height: 480 } as const;

/** Which lines a partial read covers. */
export interface RowSample {
  readonly phase: number;
  readonly step: number;
}

/** True when lines y ≡ phase (mod step) of two RGBA images of one width are equal. */
export function sampledRowsEqual(a: Uint8Array, b: Uint8Array, width: number, rows: RowSample): boolean {
  const row = width * 4;
  const lines = Math.floor(a.length / row);
  for (let y = rows.phase % rows.step; y < lines; y += rows.step) {
    const at = y * row;
    if (Buffer.compare(a.subarray(at, at + row), b.subarray(at, at + row)) !== 0) return false;
  }
  return true;
}

export class FrameReader {
  private readonly words: Uint32Array;

  constructor(private readonly memory: Uint8Array) {
    this.words = new Uint32Array(memory.buffer, memory.byteOffset, Math.floor(memory.byteLength / 4));
  }

  private engine(d: DisplayState): DisplayEngine {
    const engine = new DisplayEngine({ maxWidth: d.maxWidth, maxHeight: d.maxHeight, memorySize: d.lmSize });
    engine.regs.set(d.dispi);
    engine.bigEndian = d.bigEndian;
    return engine;
  }

  private slice(d: DisplayState): Uint8Array {
    return this.memory.subarray(d.lmBase, d.lmBase + d.lmSize);
  }

  /** The full-size image, exactly as the daemon's screenshot would have it. */
  scanout(d: DisplayState): Frame {
    return this.engine(d).scanout(this.slice(d));
  }

  png(d: DisplayState): Buffer {
    return frameToPng(this.scanout(d));
  }

  /** Display size and format (0×0 when off). */
  mode(d: DisplayState): { width: number; height: number; bpp: number; enabled: boolean } {
    const e = this.engine(d);
    return {
      width: e.enabled ? e.width : 0,
      height: e.enabled ? e.height : 0,
      bpp: e.bpp,
      enabled: e.enabled,
    };
  }

  /**
   * The image scaled down by an integer `scale` (every scale-th pixel of every
   * scale-th line), as RGBA. `out` is reused when it has the right size.
   * With `rows`, only lines y ≡ phase (mod step) are read (`partial` says so;
   * modes off the fast path are always read whole): a cheap look for changes.
   */
  read(d: DisplayState, scale: number, out?: Uint8Array, rows?: RowSample): Frame & { partial: boolean } {
    const e = this.engine(d);
    const width = e.enabled ? e.width : 0;
    const height = e.enabled ? e.height : 0;
    if (width === 0 || height === 0) {
      const w = Math.max(1, Math.floor(BLANK.width / scale));
      const h = Math.max(1, Math.floor(BLANK.height / scale));
      const rgba = out?.length === w * h * 4 ? out : new Uint8Array(w * h * 4);
      new Uint32Array(rgba.buffer, rgba.byteOffset, w * h).fill(0xff000000);
      return { width: w, height: h, rgba, partial: false };
    }
    const w = Math.max(1, Math.floor(width / scale));
    const h = Math.max(1, Math.floor(height / scale));
    const rgba = out?.length === w * h * 4 ? out : new Uint8Array(w * h * 4);
    const dst = new Uint32Array(rgba.buffer, rgba.byteOffset, w * h);
    const base = d.lmBase + e.scanoutOffset;
    const stride = e.stride;
    const fits = e.scanoutOffset + (height - 1) * stride + width * 4 <= d.lmSize;
    if (e.bpp === 32 && !e.bigEndian && base % 4 === 0 && stride % 4 === 0 && fits) {
      // B, G, R, X in memory → R, G, B, A in a little-endian u32 view of RGBA.
      const src = this.words;
      const rowWords = stride / 4;
      const step = rows?.step ?? 1;
      for (let y = rows ? rows.phase % step : 0; y < h; y += step) {
        let p = base / 4 + y * scale * rowWords;
        let o = y * w;
        for (let x = 0; x < w; x++, p += scale) {
          const v = src[p]!;
          dst[o++] = 0xff000000 | ((v & 0xff) << 16) | (v & 0xff00) | ((v >>> 16) & 0xff);
        }
      }
      return { width: w, height: h, rgba, partial: step > 1 };
    }
    const full = e.scanout(this.slice(d));
    const src = new Uint32Array(full.rgba.buffer, full.rgba.byteOffset, width * height);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) dst[y * w + x] = src[y * scale * width + x * scale]!;
    return { width: w, height: h, rgba, partial: false };
  }
}
