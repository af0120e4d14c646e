/**
 * FrameReader against the display engine's own scan-out (what screenshots
 * use): every mode and offset the fast path takes, the slow path for the rest,
 * nearest-pixel thumbnails, and partial reads for change detection.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Dispi, DispiEnable } from "../abi/index.js";
import { DisplayEngine } from "../gpu/index.js";
import { BLANK, FrameReader } from "./frames.js";
import type { DisplayState } from "./protocol.js";

const LM_BASE = 1 << 20;
const LM_SIZE = 4 << 20;

function setup(mode: {
  width: number;
  height: number;
  bpp: number;
  virtWidth?: number;
  yOffset?: number;
  bigEndian?: boolean;
}) {
  const memory = new Uint8Array(LM_BASE + LM_SIZE + 4096);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 2654435761) >>> 24; // every byte different-ish
  const e = new DisplayEngine({ maxWidth: 1024, maxHeight: 768, memorySize: LM_SIZE });
  e.writeDispi(Dispi.XRES, mode.width);
  e.writeDispi(Dispi.YRES, mode.height);
  e.writeDispi(Dispi.BPP, mode.bpp);
  e.writeDispi(Dispi.ENABLE, DispiEnable.ENABLED | DispiEnable.LFB);
  if (mode.virtWidth) e.writeDispi(Dispi.VIRT_WIDTH, mode.virtWidth);
  if (mode.yOffset) e.writeDispi(Dispi.Y_OFFSET, mode.yOffset);
  e.bigEndian = mode.bigEndian ?? false;
  const d: DisplayState = {
    uuid: "00000000-0000-4000-8000-000000000000",
    lmBase: LM_BASE,
    lmSize: LM_SIZE,
    maxWidth: 1024,
    maxHeight: 768,
    dispi: Array.from(e.regs),
    bigEndian: e.bigEndian,
  };
  const expected = e.scanout(memory.subarray(LM_BASE, LM_BASE + LM_SIZE));
  return { memory, d, expected, reader: new FrameReader(memory) };
}

test("full-size reads equal the display engine's scan-out, fast path and slow path", () => {
  for (const mode of [
    { width: 64, height: 48, bpp: 32 },
    { width: 100, height: 30, bpp: 32, virtWidth: 128, yOffset: 7 },
    { width: 64, height: 48, bpp: 32, bigEndian: true },
    { width: 64, height: 48, bpp: 16 },
    { width: 40, height: 20, bpp: 24 },
  ]) {
    const { d, expected, reader } = setup(mode);
    const got = reader.read(d, 1);
    assert.deepEqual([got.width, got.height], [expected.width, expected.height], JSON.stringify(mode));
    assert.ok(Buffer.from(got.rgba).equals(Buffer.from(expected.rgba)), JSON.stringify(mode));
    assert.ok(Buffer.from(reader.png(d)).length > 0);
  }
});

test("a thumbnail is every scale-th pixel of every scale-th line; a display that is off is black", () => {
  const { d, expected, reader } = setup({ width: 64, height: 48, bpp: 32 });
  const t = reader.read(d, 4);
  assert.deepEqual([t.width, t.height], [16, 12]);
  const src = new Uint32Array(expected.rgba.buffer);
  const dst = new Uint32Array(t.rgba.buffer);
  for (let y = 0; y < 12; y++)
    for (let x = 0; x < 16; x++) assert.equal(dst[y * 16 + x], src[y * 4 * 64 + x * 4]);
  const off = reader.read({ ...d, dispi: d.dispi.map((v, i) => (i === Dispi.ENABLE ? 0 : v)) }, 2);
  assert.deepEqual([off.width, off.height], [BLANK.width / 2, BLANK.height / 2]);
  assert.ok(new Uint32Array(off.rgba.buffer).every((p) => p === 0xff000000));
  assert.deepEqual(reader.mode(d), { width: 64, height: 48, bpp: 32, enabled: true });
});

test("visible lines are views of the framebuffer where the mode puts it, for the fast-path modes only", () => {
  const { memory, d, reader } = setup({ width: 100, height: 30, bpp: 32, virtWidth: 128, yOffset: 7 });
  const lines = reader.visibleLines(d)!;
  assert.deepEqual([lines.height, lines.lineBytes], [30, 400]);
  const at = LM_BASE + (7 + 11) * 128 * 4;
  assert.ok(Buffer.from(lines.line(11)).equals(Buffer.from(memory.subarray(at, at + 400))));
  memory[at + 5] ^= 0xff;
  assert.equal(lines.line(11)[5], memory[at + 5], "a view, not a copy");
  const moved = { ...d, dispi: d.dispi.map((v, i) => (i === Dispi.Y_OFFSET ? 0 : v)) };
  assert.notEqual(reader.visibleLines(moved)!.key, lines.key, "the key follows the scan-out offset");
  for (const mode of [
    { width: 64, height: 48, bpp: 16 },
    { width: 64, height: 48, bpp: 32, bigEndian: true },
  ]) {
    const other = setup(mode);
    assert.equal(other.reader.visibleLines(other.d), undefined, JSON.stringify(mode));
  }
});
