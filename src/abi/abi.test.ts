import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Bar2,
  Bar2Block,
  BAR2_SIZE,
  CommandCheck,
  Commands,
  type CommandSpec,
  EngineReg,
  GPR_COUNT,
  MAX_COMMAND_DWORDS,
  MI_BATCH_BUFFER_END,
  MI_NOOP,
  MI_USER_INTERRUPT,
  checkCommand,
  commandLength,
  decodeCommand,
  gprIndex,
  gttDwords,
  gttEntry,
  miBatchBufferStart,
  miFlushDw,
  miLoadRegisterImm,
  miStoreDataImm,
  xyColorBlt,
  xySrcCopyBlt,
} from "./index.js";

const rect = { x: 1, y: 2, width: 30, height: 40 };
const encoded: [CommandSpec, number[]][] = [
  [Commands.NOOP, [MI_NOOP]],
  [Commands.USER_INTERRUPT, [MI_USER_INTERRUPT]],
  [Commands.BATCH_BUFFER_END, [MI_BATCH_BUFFER_END]],
  [Commands.STORE_DATA_IMM, miStoreDataImm(0x1000, 7)],
  [Commands.LOAD_REGISTER_IMM, miLoadRegisterImm([[EngineReg.GPR0 + 4, 1]])],
  [Commands.FLUSH_DW, miFlushDw({ store: { address: 0x2000, value: 1 }, notify: true })],
  [Commands.BATCH_BUFFER_START, miBatchBufferStart(0x3000, true)],
  [Commands.XY_COLOR_BLT, xyColorBlt(0x4000, 4096, rect, 0xff00ff00)],
  [Commands.XY_SRC_COPY_BLT, xySrcCopyBlt(0x4000, 4096, rect, 0x8000, 2048, 3, 4)],
];

test("abi: every encoder's command decodes to its table entry, with its length, and passes its checks", () => {
  assert.equal(encoded.length, Object.keys(Commands).length, "every table entry has an encoder here");
  for (const [spec, dwords] of encoded) {
    assert.equal(decodeCommand(dwords[0]!), spec, spec.name);
    assert.equal(commandLength(spec, dwords[0]!), dwords.length, spec.name);
    assert.equal(checkCommand(spec, Uint32Array.from(dwords), dwords.length), CommandCheck.OK, spec.name);
  }
  // Unknown opcodes and clients decode to nothing.
  assert.equal(decodeCommand(0x01 << 23), undefined);
  assert.equal(decodeCommand((2 << 29) | (0x51 << 22)), undefined);
  assert.equal(decodeCommand(0xffffffff), undefined);
});

test("abi: the table's length and field rules refuse malformed commands", () => {
  const check = (spec: CommandSpec, dwords: number[], length = dwords.length) =>
    checkCommand(spec, Uint32Array.from(dwords), length);
  const sdi = miStoreDataImm(0x1002, 7);
  assert.equal(check(Commands.STORE_DATA_IMM, sdi), CommandCheck.MALFORMED, "misaligned store");
  assert.equal(check(Commands.STORE_DATA_IMM, [...sdi, 0, 0], 6), CommandCheck.MALFORMED, "too long");
  const lri = miLoadRegisterImm([[EngineReg.RING_START, 0]]);
  assert.equal(check(Commands.LOAD_REGISTER_IMM, lri), CommandCheck.BAD_REGISTER);
  assert.equal(check(Commands.LOAD_REGISTER_IMM, [...lri, 0], 4), CommandCheck.MALFORMED, "half a pair");
  assert.equal(check(Commands.LOAD_REGISTER_IMM, lri, MAX_COMMAND_DWORDS + 1), CommandCheck.MALFORMED);
  const fill = xyColorBlt(0x4000, 4096, rect, 0);
  assert.equal(
    check(Commands.XY_COLOR_BLT, [fill[0]!, fill[1]! & ~0xffff, ...fill.slice(2)]),
    CommandCheck.MALFORMED,
  );
  assert.equal(
    check(Commands.XY_COLOR_BLT, [fill[0]!, fill[1]! | 2, ...fill.slice(2)]),
    CommandCheck.MALFORMED,
  );
  const copy = xySrcCopyBlt(0x4000, 4096, rect, 0x8000, 2048, 0, 0);
  copy[7] = 6;
  assert.equal(
    check(Commands.XY_SRC_COPY_BLT, copy),
    CommandCheck.MALFORMED,
    "source pitch not dword-aligned",
  );
  assert.equal(check(Commands.BATCH_BUFFER_START, miBatchBufferStart(0x3002)), CommandCheck.MALFORMED);
  for (let n = 0; n < GPR_COUNT; n++) assert.equal(gprIndex(EngineReg.GPR0 + 4 * n), n);
  assert.equal(gprIndex(EngineReg.GPR0 + 4 * GPR_COUNT), -1);
  assert.equal(gprIndex(EngineReg.GPR0 + 2), -1);
});

test("abi: BAR2's register blocks do not overlap and fit the BAR; GTT entries encode both ways alike", () => {
  const blocks = Object.values(Bar2Block).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < blocks.length; i++)
    assert.ok(
      blocks[i - 1]!.offset + blocks[i - 1]!.size <= blocks[i]!.offset,
      `block at 0x${blocks[i]!.offset.toString(16)}`,
    );
  const last = blocks[blocks.length - 1]!;
  assert.ok(last.offset + last.size <= BAR2_SIZE);
  for (const r of [Bar2.RING_START, Bar2.ENGINE_RESET, Bar2.GPR0 + 4 * (GPR_COUNT - 1)])
    assert.ok(r >= Bar2Block.ENGINE.offset && r < Bar2Block.ENGINE.offset + Bar2Block.ENGINE.size);
  for (const r of [Bar2.ISR, Bar2.IMR, Bar2.IIR, Bar2.IER])
    assert.ok(r >= Bar2Block.IRQ.offset && r < Bar2Block.IRQ.offset + Bar2Block.IRQ.size);
  for (const [kind, address] of [
    ["local", 0x12345000],
    ["system", 0x7_0000_3000],
  ] as const) {
    const { lo, hi } = gttDwords(kind, address);
    assert.equal((BigInt(hi) << 32n) | BigInt(lo), gttEntry(kind, address));
  }
});
