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

/** The visible lines of a display where they are in memory (views, no copy). */
export interface VisibleLines {
  readonly height: number;
  readonly lineBytes: number;
  /** Changes whenever the mode, the stride or the scan-out offset does. */
  readonly key: string;
  line(y: number): Uint8Array;
}

export class FrameReader {
  private readonly words: Uint32Array;

  constructor(
    private readonly memory: Uint8Array,
    /** Called before a display is read (the web thread maps the vGPU's slice in here). */
    private readonly prepare?: (d: DisplayState) => void,
  ) {
    this.words = new Uint32Array(memory.buffer, memory.byteOffset, Math.floor(memory.byteLength / 4));
  }

  private engine(d: DisplayState): DisplayEngine {
    this.prepare?.(d);
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
   * The visible lines in memory, for 32 bpp little-endian modes (the common
   * case): comparing them with a copy is a memcmp, far cheaper than a scan-out.
   */
  visibleLines(d: DisplayState): VisibleLines | undefined {
    const e = this.engine(d);
    if (!e.enabled || e.bpp !== 32 || e.bigEndian || e.width === 0 || e.height === 0) return undefined;
    const stride = e.stride;
    const lineBytes = e.width * 4;
    if (e.scanoutOffset + (e.height - 1) * stride + lineBytes > d.lmSize) return undefined;
    const base = d.lmBase + e.scanoutOffset;
    const memory = this.memory;
    return {
      height: e.height,
      lineBytes,
      key: `${base}/${stride}/${e.width}x${e.height}`,
      line: (y) => memory.subarray(base + y * stride, base + y * stride + lineBytes),
    };
  }

  /**
   * The image scaled down by an integer `scale` (every scale-th pixel of every
   * scale-th line), as RGBA. `out` is reused when it has the right size.
   */
  read(d: DisplayState, scale: number, out?: Uint8Array): Frame {
    const e = this.engine(d);
    const width = e.enabled ? e.width : 0;
    const height = e.enabled ? e.height : 0;
    if (width === 0 || height === 0) {
      const w = Math.max(1, Math.floor(BLANK.width / scale));
      const h = Math.max(1, Math.floor(BLANK.height / scale));
      const rgba = out?.length === w * h * 4 ? out : new Uint8Array(w * h * 4);
      new Uint32Array(rgba.buffer, rgba.byteOffset, w * h).fill(0xff000000);
      return { width: w, height: h, rgba };
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
      for (let y = 0; y < h; y++) {
        let p = base / 4 + y * scale * rowWords;
        let o = y * w;
        for (let x = 0; x < w; x++, p += scale) {
          const v = src[p]!;
          dst[o++] = 0xff000000 | ((v & 0xff) << 16) | (v & 0xff00) | ((v >>> 16) & 0xff);
        }
      }
      return { width: w, height: h, rgba };
    }
    const full = e.scanout(this.slice(d));
    const src = new Uint32Array(full.rgba.buffer, full.rgba.byteOffset, width * height);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) dst[y * w + x] = src[y * scale * width + x * scale]!;
    return { width: w, height: h, rgba };
  }
}
