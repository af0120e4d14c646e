/**
 * Command encodings, Intel-style (gen8+ layouts with 64-bit addresses): the MI
 * commands of the command streamer and the two XY blits of the 2D engine, as
 * ONE table (`Commands`) that the parent's engine and the mediator's scanner
 * both read: how a command is matched and how long it is, which lengths and
 * field values are valid, whether a guest may submit it, and which of its
 * dwords are graphics addresses. The encoders below are what every driver
 * (native, guest) and the tests submit.
 */
import { EngineReg, GPR_COUNT } from "./registers.js";

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

/** The longest command either side accepts (dwords): the engine's and the scanner's fetch buffers. */
export const MAX_COMMAND_DWORDS = 64;

/** DW0 bit 22 of MI_BATCH_BUFFER_START: second-level (nested) batch. */
export const BB_SECOND_LEVEL = 1 << 22;
/** MI_FLUSH_DW: post-sync "write immediate data", and notify (interrupt). */
export const FLUSH_POST_SYNC_WRITE = 1 << 14;
export const FLUSH_NOTIFY = 1 << 8;
/** XY blits, BR13 (DW1): 32 bpp color depth (bits 25:24), raster operation (23:16), pitch (15:0). */
export const BLT_DEPTH_MASK = 3 << 24;
export const BLT_DEPTH_32 = 3 << 24;
/** XY blits, DW0: "write alpha and RGB". */
export const BLT_WRITE_RGBA = 3 << 20;
export const ROP_PATCOPY = 0xf0;
export const ROP_SRCCOPY = 0xcc;

export const bltPitch = (dw: number) => dw & 0xffff;
export const bltRop = (dw: number) => (dw >>> 16) & 0xff;
/** X and Y of a coordinate dword: signed 16-bit halves, x in the low one. */
export const coordX = (dw: number) => (dw << 16) >> 16;
export const coordY = (dw: number) => dw >> 16;
/** A 64-bit graphics address from its two dwords (low first). */
export const address64 = (lo: number, hi: number) => lo + hi * 0x100000000;

/** XY blit dword indexes (Intel's BR00..BR09). */
export const Blt = {
  BR13: 1,
  DST_TOP_LEFT: 2,
  DST_BOTTOM_RIGHT: 3,
  DST_ADDRESS: 4,
  /** XY_COLOR_BLT: the fill colour. */
  COLOR: 6,
  /** XY_SRC_COPY_BLT: the source's top-left, pitch (15:0) and address. */
  SRC_TOP_LEFT: 6,
  SRC_PITCH: 7,
  SRC_ADDRESS: 8,
} as const;

/** What a command's checks found: all well, a malformed command, or a register it may not write. */
export const CommandCheck = { OK: 0, MALFORMED: 1, BAD_REGISTER: 2 } as const;
export type CommandCheckResult = (typeof CommandCheck)[keyof typeof CommandCheck];

/**
 * A graphics address a command carries, at `dword` (low) and `dword + 1` (high):
 * - "data": `(length - 3) * 4` bytes written at the address (its low bits under
 *   `align` ignored), only when DW0 has the `when` bit (0: always);
 * - "batch": where a batch buffer starts (the scanner follows it);
 * - "surface": a 32 bpp blit surface, the rows of the blit's height from the Y
 *   of `originDword`, at the pitch in bits 15:0 of `pitchDword`.
 * `written`: the engine writes through it (data, a blit's destination); else it only reads.
 * Every operand has every field (unused ones 0), so the scanner's loads stay monomorphic.
 */
export interface AddressOperand {
  readonly kind: "data" | "batch" | "surface";
  readonly written: boolean;
  readonly dword: number;
  readonly align: number;
  readonly when: number;
  readonly pitchDword: number;
  readonly originDword: number;
}

const dataOperand = (dword: number, align: number, when: number): AddressOperand => ({
  kind: "data",
  written: true,
  dword,
  align,
  when,
  pitchDword: 0,
  originDword: 0,
});
const batchOperand = (dword: number): AddressOperand => ({
  kind: "batch",
  written: false,
  dword,
  align: 4,
  when: 0,
  pitchDword: 0,
  originDword: 0,
});
const surfaceOperand = (
  dword: number,
  pitchDword: number,
  originDword: number,
  written: boolean,
): AddressOperand => ({
  kind: "surface",
  written,
  dword,
  align: 1,
  when: 0,
  pitchDword,
  originDword,
});

export interface CommandSpec {
  readonly name: string;
  readonly client: number;
  readonly opcode: number;
  /** The length is DW0[7:0] + 2 dwords; else the command is one dword. */
  readonly lengthInDw0: boolean;
  /** Valid total lengths (dwords): minLength..maxLength, odd ones only when `oddLength`. */
  readonly minLength: number;
  readonly maxLength: number;
  readonly oddLength: boolean;
  /** A guest may not submit it (the scanner refuses it; the parent's own driver may). */
  readonly privileged: boolean;
  /** Field rules beyond the length (the command's dwords in `cmd`). */
  readonly fields: ((cmd: Uint32Array, length: number) => CommandCheckResult) | undefined;
  readonly addresses: readonly AddressOperand[];
}

type SpecInput = Pick<CommandSpec, "name" | "opcode"> &
  Partial<Omit<CommandSpec, "name" | "opcode" | "client">>;

const miSpec = (s: SpecInput): CommandSpec => spec(CLIENT_MI, s);
const bltSpec = (s: SpecInput): CommandSpec => spec(CLIENT_2D, s);
function spec(clientId: number, s: SpecInput): CommandSpec {
  const lengthInDw0 = s.lengthInDw0 ?? false;
  // Every entry built with the same keys in the same order: one hidden class for the decoders.
  return {
    name: s.name,
    client: clientId,
    opcode: s.opcode,
    lengthInDw0,
    minLength: s.minLength ?? (lengthInDw0 ? 2 : 1),
    maxLength: s.maxLength ?? (lengthInDw0 ? MAX_COMMAND_DWORDS : 1),
    oddLength: s.oddLength ?? false,
    privileged: s.privileged ?? false,
    fields: s.fields,
    addresses: s.addresses ?? [],
  };
}

const aligned4 = (dword: number) => (cmd: Uint32Array) =>
  address64(cmd[dword]!, cmd[dword + 1]!) % 4 === 0 ? CommandCheck.OK : CommandCheck.MALFORMED;

const validPitch = (pitch: number) => pitch !== 0 && pitch % 4 === 0;

/** An XY blit: fixed length, 32 bpp, the one ROP it implements, and a dword-aligned pitch on every surface. */
function xyBlt(
  name: string,
  opcode: number,
  length: number,
  rop: number,
  surfaces: readonly AddressOperand[],
): CommandSpec {
  const pitchDwords = surfaces.map((s) => s.pitchDword);
  return bltSpec({
    name,
    opcode,
    lengthInDw0: true,
    minLength: length,
    maxLength: length,
    fields: (cmd) => {
      const br13 = cmd[Blt.BR13]!;
      if ((br13 & BLT_DEPTH_MASK) !== BLT_DEPTH_32 || bltRop(br13) !== rop) return CommandCheck.MALFORMED;
      for (let i = 0; i < pitchDwords.length; i++)
        if (!validPitch(bltPitch(cmd[pitchDwords[i]!]!))) return CommandCheck.MALFORMED;
      return CommandCheck.OK;
    },
    addresses: surfaces,
  });
}

/** Every command the parent's engine knows: the one table. */
export const Commands = {
  NOOP: miSpec({ name: "MI_NOOP", opcode: MiOp.NOOP }),
  USER_INTERRUPT: miSpec({ name: "MI_USER_INTERRUPT", opcode: MiOp.USER_INTERRUPT }),
  BATCH_BUFFER_END: miSpec({ name: "MI_BATCH_BUFFER_END", opcode: MiOp.BATCH_BUFFER_END }),
  STORE_DATA_IMM: miSpec({
    name: "MI_STORE_DATA_IMM",
    opcode: MiOp.STORE_DATA_IMM,
    lengthInDw0: true,
    minLength: 4,
    maxLength: 5,
    fields: aligned4(1),
    addresses: [dataOperand(1, 1, 0)],
  }),
  LOAD_REGISTER_IMM: miSpec({
    name: "MI_LOAD_REGISTER_IMM",
    opcode: MiOp.LOAD_REGISTER_IMM,
    lengthInDw0: true,
    minLength: 3,
    oddLength: true,
    // (register, value) pairs; only the general-purpose registers are writable.
    fields: (cmd, length) => {
      for (let i = 1; i < length; i += 2) if (gprIndex(cmd[i]!) < 0) return CommandCheck.BAD_REGISTER;
      return CommandCheck.OK;
    },
  }),
  FLUSH_DW: miSpec({
    name: "MI_FLUSH_DW",
    opcode: MiOp.FLUSH_DW,
    lengthInDw0: true,
    minLength: 4,
    maxLength: 5,
    addresses: [dataOperand(1, 8, FLUSH_POST_SYNC_WRITE)],
  }),
  BATCH_BUFFER_START: miSpec({
    name: "MI_BATCH_BUFFER_START",
    opcode: MiOp.BATCH_BUFFER_START,
    lengthInDw0: true,
    minLength: 3,
    maxLength: 3,
    fields: aligned4(1),
    addresses: [batchOperand(1)],
  }),
  XY_COLOR_BLT: xyBlt("XY_COLOR_BLT", BltOp.XY_COLOR_BLT, 7, ROP_PATCOPY, [
    surfaceOperand(Blt.DST_ADDRESS, Blt.BR13, Blt.DST_TOP_LEFT, true),
  ]),
  XY_SRC_COPY_BLT: xyBlt("XY_SRC_COPY_BLT", BltOp.XY_SRC_COPY_BLT, 10, ROP_SRCCOPY, [
    surfaceOperand(Blt.DST_ADDRESS, Blt.BR13, Blt.DST_TOP_LEFT, true),
    surfaceOperand(Blt.SRC_ADDRESS, Blt.SRC_PITCH, Blt.SRC_TOP_LEFT, false),
  ]),
} as const satisfies Record<string, CommandSpec>;

// Decoding: one array per client, indexed by opcode, so a lookup is two loads.
const miTable = new Array<CommandSpec | undefined>(64).fill(undefined);
const bltTable = new Array<CommandSpec | undefined>(128).fill(undefined);
for (const s of Object.values(Commands) as CommandSpec[])
  (s.client === CLIENT_MI ? miTable : bltTable)[s.opcode] = s;

/** The command a first dword starts, or undefined if the engine does not know it. */
export function decodeCommand(dw0: number): CommandSpec | undefined {
  const c = client(dw0);
  if (c === CLIENT_MI) return miTable[miOpcode(dw0)];
  if (c === CLIENT_2D) return bltTable[bltOpcode(dw0)];
  return undefined;
}

/** Total dwords of a command of `spec` starting with `dw0` (not yet checked against its valid lengths). */
export function commandLength(spec: CommandSpec, dw0: number): number {
  return spec.lengthInDw0 ? (dw0 & 0xff) + 2 : 1;
}

/** Checks a fetched command's length and fields against the table. */
export function checkCommand(spec: CommandSpec, cmd: Uint32Array, length: number): CommandCheckResult {
  if (length < spec.minLength || length > spec.maxLength || (spec.oddLength && length % 2 === 0))
    return CommandCheck.MALFORMED;
  return spec.fields ? spec.fields(cmd, length) : CommandCheck.OK;
}

/** The GPR a register offset names, or -1 if it is not one. */
export function gprIndex(register: number): number {
  const n = (register - EngineReg.GPR0) / 4;
  return Number.isInteger(n) && n >= 0 && n < GPR_COUNT ? n : -1;
}

// ---- encoders ---------------------------------------------------------------

const mi = (op: number, extra = 0) => ((op << 23) | extra) >>> 0;
const lo = (addr: number) => addr >>> 0;
const hi = (addr: number) => Math.floor(addr / 0x100000000) >>> 0;

export const MI_NOOP = 0;
export const MI_USER_INTERRUPT = mi(MiOp.USER_INTERRUPT);
export const MI_BATCH_BUFFER_END = mi(MiOp.BATCH_BUFFER_END);

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

/** DW0..DW5 of an XY blit of `dwords` in all: opcode and length, BR13, the destination rectangle and address. */
function bltDestination(
  op: number,
  dwords: number,
  rop: number,
  pitch: number,
  rect: Rect,
  dst: number,
): number[] {
  return [
    ((CLIENT_2D << 29) | (op << 22) | BLT_WRITE_RGBA | (dwords - 2)) >>> 0,
    (BLT_DEPTH_32 | (rop << 16) | (pitch & 0xffff)) >>> 0,
    xy(rect.x, rect.y),
    xy(rect.x + rect.width, rect.y + rect.height),
    lo(dst),
    hi(dst),
  ];
}

/** XY_COLOR_BLT: fill `rect` of a 32 bpp surface at `dst` with `color`. */
export function xyColorBlt(dst: number, pitch: number, rect: Rect, color: number): number[] {
  const out = bltDestination(BltOp.XY_COLOR_BLT, 7, ROP_PATCOPY, pitch, rect, dst);
  out.push(color >>> 0);
  return out;
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
  const out = bltDestination(BltOp.XY_SRC_COPY_BLT, 10, ROP_SRCCOPY, dstPitch, dstRect, dst);
  out.push(xy(srcX, srcY), srcPitch & 0xffff, lo(src), hi(src));
  return out;
}
