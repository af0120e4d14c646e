import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as abi from "./index.js";

const rect = { x: 1, y: 2, width: 30, height: 40 };
const encoded: [abi.CommandSpec, number[]][] = [
  [abi.Commands.NOOP, [abi.MI_NOOP]],
  [abi.Commands.USER_INTERRUPT, [abi.MI_USER_INTERRUPT]],
  [abi.Commands.BATCH_BUFFER_END, [abi.MI_BATCH_BUFFER_END]],
  [abi.Commands.STORE_DATA_IMM, abi.miStoreDataImm(0x1000, 7)],
  [abi.Commands.LOAD_REGISTER_IMM, abi.miLoadRegisterImm([[abi.EngineReg.GPR0 + 4, 1]])],
  [abi.Commands.FLUSH_DW, abi.miFlushDw({ store: { address: 0x2000, value: 1 }, notify: true })],
  [abi.Commands.BATCH_BUFFER_START, abi.miBatchBufferStart(0x3000, true)],
  [abi.Commands.XY_COLOR_BLT, abi.xyColorBlt(0x4000, 4096, rect, 0xff00ff00)],
  [abi.Commands.XY_SRC_COPY_BLT, abi.xySrcCopyBlt(0x4000, 4096, rect, 0x8000, 2048, 3, 4)],
];

test("abi: every encoder's command decodes to its table entry, with its length, and passes its checks", () => {
  assert.equal(encoded.length, Object.keys(abi.Commands).length, "every table entry has an encoder here");
  for (const [spec, dwords] of encoded) {
    assert.equal(abi.decodeCommand(dwords[0]!), spec, spec.name);
    assert.equal(abi.commandLength(spec, dwords[0]!), dwords.length, spec.name);
    assert.equal(
      abi.checkCommand(spec, Uint32Array.from(dwords), dwords.length),
      abi.CommandCheck.OK,
      spec.name,
    );
  }
  // Unknown opcodes and clients decode to nothing.
  assert.equal(abi.decodeCommand(0x01 << 23), undefined);
  assert.equal(abi.decodeCommand((2 << 29) | (0x51 << 22)), undefined);
  assert.equal(abi.decodeCommand(0xffffffff), undefined);
});

test("abi: the table's length and field rules refuse malformed commands", () => {
  const check = (spec: abi.CommandSpec, dwords: number[], length = dwords.length) =>
    abi.checkCommand(spec, Uint32Array.from(dwords), length);
  const sdi = abi.miStoreDataImm(0x1002, 7);
  assert.equal(check(abi.Commands.STORE_DATA_IMM, sdi), abi.CommandCheck.MALFORMED, "misaligned store");
  assert.equal(check(abi.Commands.STORE_DATA_IMM, [...sdi, 0, 0], 6), abi.CommandCheck.MALFORMED, "too long");
  const lri = abi.miLoadRegisterImm([[abi.EngineReg.RING_START, 0]]);
  assert.equal(check(abi.Commands.LOAD_REGISTER_IMM, lri), abi.CommandCheck.BAD_REGISTER);
  assert.equal(
    check(abi.Commands.LOAD_REGISTER_IMM, [...lri, 0], 4),
    abi.CommandCheck.MALFORMED,
    "half a pair",
  );
  assert.equal(
    check(abi.Commands.LOAD_REGISTER_IMM, lri, abi.MAX_COMMAND_DWORDS + 1),
    abi.CommandCheck.MALFORMED,
  );
  const fill = abi.xyColorBlt(0x4000, 4096, rect, 0);
  assert.equal(
    check(abi.Commands.XY_COLOR_BLT, [fill[0]!, fill[1]! & ~0xffff, ...fill.slice(2)]),
    abi.CommandCheck.MALFORMED,
  );
  assert.equal(
    check(abi.Commands.XY_COLOR_BLT, [fill[0]!, fill[1]! | 2, ...fill.slice(2)]),
    abi.CommandCheck.MALFORMED,
  );
  const copy = abi.xySrcCopyBlt(0x4000, 4096, rect, 0x8000, 2048, 0, 0);
  copy[7] = 6;
  assert.equal(
    check(abi.Commands.XY_SRC_COPY_BLT, copy),
    abi.CommandCheck.MALFORMED,
    "source pitch not dword-aligned",
  );
  assert.equal(
    check(abi.Commands.BATCH_BUFFER_START, abi.miBatchBufferStart(0x3002)),
    abi.CommandCheck.MALFORMED,
  );
  for (let n = 0; n < abi.GPR_COUNT; n++) assert.equal(abi.gprIndex(abi.EngineReg.GPR0 + 4 * n), n);
  assert.equal(abi.gprIndex(abi.EngineReg.GPR0 + 4 * abi.GPR_COUNT), -1);
  assert.equal(abi.gprIndex(abi.EngineReg.GPR0 + 2), -1);
});

test("abi: BAR2's register blocks do not overlap and fit the BAR; GTT entries encode both ways alike", () => {
  const blocks = Object.values(abi.Bar2Block).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < blocks.length; i++)
    assert.ok(
      blocks[i - 1]!.offset + blocks[i - 1]!.size <= blocks[i]!.offset,
      `block at 0x${blocks[i]!.offset.toString(16)}`,
    );
  const last = blocks[blocks.length - 1]!;
  assert.ok(last.offset + last.size <= abi.BAR2_SIZE);
  for (const r of [abi.Bar2.RING_START, abi.Bar2.ENGINE_RESET, abi.Bar2.GPR0 + 4 * (abi.GPR_COUNT - 1)])
    assert.ok(
      r >= abi.Bar2Block.ENGINE.offset && r < abi.Bar2Block.ENGINE.offset + abi.Bar2Block.ENGINE.size,
    );
  for (const r of [abi.Bar2.ISR, abi.Bar2.IMR, abi.Bar2.IIR, abi.Bar2.IER])
    assert.ok(r >= abi.Bar2Block.IRQ.offset && r < abi.Bar2Block.IRQ.offset + abi.Bar2Block.IRQ.size);
  for (const [kind, address] of [
    ["local", 0x12345000],
    ["system", 0x7_0000_3000],
  ] as const) {
    const { lo, hi } = abi.gttDwords(kind, address);
    assert.equal((BigInt(hi) << 32n) | BigInt(lo), abi.gttEntry(kind, address));
  }
});

test("abi: imports nothing but the error base class; the guest driver imports only abi/, base/ and its bus", () => {
  const here = dirname(fileURLToPath(import.meta.url));
  const importsOf = (folder: string) =>
    readdirSync(join(here, "..", folder))
      .filter((f) => f.endsWith(".js") && !f.endsWith(".test.js"))
      .flatMap((f) =>
        [
          ...readFileSync(join(here, "..", folder, f), "utf8").matchAll(
            /^(?:import|export)\b[^;]*? from "([^"]+)"/gms,
          ),
        ].map((m) => `${f}: ${m[1]}`),
      );
  for (const line of importsOf("abi"))
    assert.match(line, /: \.\/[\w-]+\.js$|: \.\.\/base\/errors\.js$/, `abi/ reaches outside: ${line}`);
  for (const line of importsOf("guest"))
    assert.match(line, /: \.\/[\w-]+\.js$|: \.\.\/(abi|base)\/index\.js$/, `guest/ reaches outside: ${line}`);
});
