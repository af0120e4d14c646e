/**
 * 2D drawing as data: fills and copies on named surfaces, and their encoding
 * as XY blits. The workload suite is written in these terms once, so the
 * native driver and a guest driver behind a vGPU submit the very same
 * commands and their figures compare as a ratio.
 */
import { MgpuError } from "../base/errors.js";
import { type Rect, xyColorBlt, xySrcCopyBlt } from "./commands.js";

export interface Surface {
  /** Graphics address of pixel (0, 0). */
  readonly gma: number;
  readonly width: number;
  readonly height: number;
  /** Bytes per line (32 bpp). */
  readonly pitch: number;
}

export type BlitOp =
  | { readonly kind: "fill"; readonly dst: string; readonly rect: Rect; readonly color: number }
  | {
      readonly kind: "copy";
      readonly src: string;
      readonly dst: string;
      readonly srcX: number;
      readonly srcY: number;
      readonly rect: Rect;
    };

/** A named piece of 2D work: the surfaces it draws on, its (untimed) setup and its measured operations. */
export interface Workload {
  readonly name: string;
  /** Surfaces it needs, by name (width × height pixels, 32 bpp). */
  readonly surfaces: Readonly<Record<string, { readonly width: number; readonly height: number }>>;
  /** Operations to prepare the surfaces (not timed), then the measured ones. */
  readonly setup: readonly BlitOp[];
  readonly ops: readonly BlitOp[];
  /** Bytes the measured ops write (for GB/s). */
  readonly bytes: number;
  /** The surface that holds the result (shown on the display for frames). */
  readonly output: string;
}

/** An operation names a surface the caller did not allocate. */
export class BlitOpError extends MgpuError<"ENOSURFACE"> {
  constructor(name: string) {
    super("ENOSURFACE", `no surface ${name}`);
  }
}

/** Encodes ops as XY blit commands against the given surface addresses. */
export function encodeOps(ops: readonly BlitOp[], surfaces: Readonly<Record<string, Surface>>): number[] {
  const out: number[] = [];
  const get = (name: string) => {
    const s = surfaces[name];
    if (!s) throw new BlitOpError(name);
    return s;
  };
  for (const op of ops) {
    if (op.kind === "fill") {
      const d = get(op.dst);
      out.push(...xyColorBlt(d.gma, d.pitch, op.rect, op.color));
    } else {
      const d = get(op.dst);
      const s = get(op.src);
      out.push(...xySrcCopyBlt(d.gma, d.pitch, op.rect, s.gma, s.pitch, op.srcX, op.srcY));
    }
  }
  return out;
}
