import { test } from "node:test";
import assert from "node:assert/strict";
import { PciDeclarationError } from "./errors.js";
import type { RegionHandler } from "./pci-device.js";
import { SubRangeMap, reservedRange, valueRegisters } from "./subranges.js";

/** A block that records what reached it and reads back its relative offsets. */
function recorder(): RegionHandler & { seen: string[] } {
  const seen: string[] = [];
  return {
    seen,
    read(offset, count, out, at) {
      seen.push(`r${offset}+${count}`);
      for (let i = 0; i < count; i++) out[at + i] = (offset + i) & 0xff;
    },
    write(offset, count, data, at) {
      seen.push(`w${offset}+${count}=${data[at]}`);
    },
  };
}

test("sub-range map: accesses reach the block their first byte is in, at block-relative offsets", () => {
  const a = recorder();
  const b = recorder();
  const unknown: [number, boolean][] = [];
  // Declared out of order: the map sorts them.
  const map = new SubRangeMap(
    0x1000,
    [
      { name: "b", offset: 0x800, size: 0x800, handler: b },
      { name: "a", offset: 0x100, size: 0x10, handler: a },
    ],
    (offset, write) => unknown.push([offset, write]),
  );
  assert.deepEqual(
    map.ranges.map((r) => r.name),
    ["a", "b"],
  );
  const out = new Uint8Array(8).fill(0xee);
  map.read(0x100, 4, out, 0);
  map.read(0x10f, 1, out, 4);
  map.write(0xfff, 1, Uint8Array.of(9), 0);
  map.write(0x800, 8, Uint8Array.of(7, 0, 0, 0, 0, 0, 0, 0), 0);
  assert.deepEqual(a.seen, ["r0+4", "r15+1"]);
  assert.deepEqual(b.seen, ["w2047+1=9", "w0+8=7"]);
  assert.deepEqual(Array.from(out.subarray(0, 5)), [0, 1, 2, 3, 15]);
  assert.equal(map.find(0x110), undefined, "one past a block");
  assert.equal(map.find(0x7ff), undefined);
  assert.equal(map.find(0x800)?.name, "b");

  // Offsets no block covers: zeros, writes dropped, one report each.
  out.fill(0xee);
  map.read(0x110, 4, out, 2);
  map.write(0x0, 4, Uint8Array.of(1, 2, 3, 4), 0);
  assert.deepEqual(Array.from(out), [0xee, 0xee, 0, 0, 0, 0, 0xee, 0xee]);
  assert.deepEqual(unknown, [
    [0x110, false],
    [0x0, true],
  ]);
  assert.equal(a.seen.length + b.seen.length, 4, "unknown offsets reach no block");
});

test("sub-range map: overlapping blocks and blocks outside the region are declaration errors", () => {
  const h = reservedRange;
  assert.throws(
    () =>
      new SubRangeMap(0x100, [
        { name: "x", offset: 0, size: 0x20, handler: h },
        { name: "y", offset: 0x1f, size: 0x10, handler: h },
      ]),
    (e: unknown) =>
      e instanceof PciDeclarationError && e.code === "EDECLARATION" && /x and y overlap/.test(e.message),
  );
  assert.throws(
    () => new SubRangeMap(0x100, [{ name: "z", offset: 0xf0, size: 0x20, handler: h }]),
    PciDeclarationError,
  );
  assert.throws(
    () => new SubRangeMap(0x100, [{ name: "e", offset: 0, size: 0, handler: h }]),
    PciDeclarationError,
  );
  // Adjacent blocks are fine.
  const map = new SubRangeMap(0x100, [
    { name: "x", offset: 0, size: 0x80, handler: h },
    { name: "y", offset: 0x80, size: 0x80, handler: h },
  ]);
  assert.equal(map.find(0x7f)?.name, "x");
  assert.equal(map.find(0x80)?.name, "y");
});

test("value registers: little-endian bytes of the value, zeros past the fourth; writes see the first four", () => {
  const writes: [number, number, number][] = [];
  const block = valueRegisters({
    read: (offset, count) => (offset === 0 ? 0x44332211 : count),
    write: (offset, count, value) => writes.push([offset, count, value]),
  });
  const out = new Uint8Array(8);
  block.read(0, 8, out, 0);
  assert.deepEqual(Array.from(out), [0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0]);
  block.read(4, 2, out, 0);
  assert.deepEqual(Array.from(out.subarray(0, 2)), [2, 0]);
  block.write(4, 8, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), 0);
  block.write(6, 2, Uint8Array.of(0xff, 0xff), 0);
  assert.deepEqual(writes, [
    [4, 8, 0x04030201],
    [6, 2, 0xffff],
  ]);
  // A read-only block ignores writes.
  valueRegisters({ read: () => 1 }).write(0, 4, Uint8Array.of(1, 2, 3, 4), 0);
});
