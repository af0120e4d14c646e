/**
 * The fixed workload suite, defined once as blit operations on named surfaces
 * (abi/blit-ops), so the native driver and a guest driver behind a vGPU run the
 * very same work and their figures can be compared as a ratio.
 */
import type { BlitOp, Workload } from "../abi/index.js";

/** A small deterministic PRNG (mulberry32), so workloads are identical everywhere. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const LINE = 1024; // pixels per line of the linear test surfaces: 4 KiB

function linearFill(bytes: number): Workload {
  const rows = bytes / (LINE * 4);
  return {
    name: `fill-${label(bytes)}`,
    surfaces: { dst: { width: LINE, height: rows } },
    setup: [],
    ops: [{ kind: "fill", dst: "dst", rect: { x: 0, y: 0, width: LINE, height: rows }, color: 0xff3366cc }],
    bytes,
    output: "dst",
  };
}

function linearCopy(bytes: number): Workload {
  const rows = bytes / (LINE * 4);
  return {
    name: `copy-${label(bytes)}`,
    surfaces: { src: { width: LINE, height: rows }, dst: { width: LINE, height: rows } },
    setup: [{ kind: "fill", dst: "src", rect: { x: 0, y: 0, width: LINE, height: rows }, color: 0xff00ff00 }],
    ops: [
      {
        kind: "copy",
        src: "src",
        dst: "dst",
        srcX: 0,
        srcY: 0,
        rect: { x: 0, y: 0, width: LINE, height: rows },
      },
    ],
    bytes,
    output: "dst",
  };
}

function label(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20}M` : `${bytes >> 10}K`;
}

/** A window moved by a few pixels over itself: every row overlaps its source. */
export function overlappingCopy(): Workload {
  const w = 512,
    h = 512;
  const setup: BlitOp[] = [];
  for (let i = 0; i < 16; i++)
    setup.push({
      kind: "fill",
      dst: "s",
      rect: { x: 0, y: i * 32, width: w, height: 32 },
      color: 0xff000000 | (i * 0x0f0f0f),
    });
  return {
    name: "overlap-copy",
    surfaces: { s: { width: w, height: h } },
    setup,
    ops: [
      { kind: "copy", src: "s", dst: "s", srcX: 0, srcY: 0, rect: { x: 13, y: 7, width: 400, height: 400 } },
      { kind: "copy", src: "s", dst: "s", srcX: 20, srcY: 30, rect: { x: 3, y: 2, width: 400, height: 400 } },
    ],
    bytes: 2 * 400 * 400 * 4,
    output: "s",
  };
}

export const DESKTOP = { width: 1280, height: 800 } as const;

/** A desktop frame at 1280×800: clear, 200 window copies from an off-screen surface, 50 fills. */
export function desktopFrame(seed = 1): Workload {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const { width, height } = DESKTOP;
  const setup: BlitOp[] = [];
  // Off-screen "window contents": stripes of colour.
  for (let i = 0; i < 20; i++)
    setup.push({
      kind: "fill",
      dst: "windows",
      rect: { x: 0, y: i * 40, width, height: 40 },
      color: 0xff000000 | int(0xffffff),
    });
  const ops: BlitOp[] = [
    { kind: "fill", dst: "screen", rect: { x: 0, y: 0, width, height }, color: 0xff203040 },
  ];
  let bytes = width * height * 4;
  for (let i = 0; i < 200; i++) {
    const w = 64 + int(336),
      h = 48 + int(252);
    const rect = { x: int(width - w), y: int(height - h), width: w, height: h };
    ops.push({
      kind: "copy",
      src: "windows",
      dst: "screen",
      srcX: int(width - w),
      srcY: int(height - h),
      rect,
    });
    bytes += w * h * 4;
  }
  for (let i = 0; i < 50; i++) {
    const w = 16 + int(200),
      h = 16 + int(120);
    ops.push({
      kind: "fill",
      dst: "screen",
      rect: { x: int(width - w), y: int(height - h), width: w, height: h },
      color: 0xff000000 | int(0xffffff),
    });
    bytes += w * h * 4;
  }
  return {
    name: "desktop-frame",
    surfaces: { screen: { width, height }, windows: { width, height } },
    setup,
    ops,
    bytes,
    output: "screen",
  };
}

/** The whole suite, in a fixed order. */
export function workloadSuite(): Workload[] {
  const sizes = [4 << 10, 64 << 10, 8 << 20];
  return [...sizes.map(linearFill), ...sizes.map(linearCopy), overlappingCopy(), desktopFrame()];
}
