import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioUserError } from "../vfio-user/index.js";
import { CapabilityChain, MsiCapability, PowerManagement } from "./capabilities.js";
import { Cfg, ConfigSpace, Status } from "./config-space.js";
import { describeConfig } from "./describe.js";
import { type BarDeclaration, barAddress, initHeader, validateBars } from "./header.js";

function header(
  bars: BarDeclaration[] = [{ index: 0, size: 0x1000, kind: "mem32" }],
  rom?: number,
): ConfigSpace {
  const cfg = new ConfigSpace();
  initHeader(cfg, { vendorId: 0x1af4, deviceId: 0x1234, classCode: 0x030000, revision: 2 }, bars, rom, 1);
  return cfg;
}

test("read-only fields hold against writes of every width", () => {
  const cfg = header();
  for (const width of [1, 2, 4] as const)
    for (let o = 0; o < 0x10; o += width) cfg.writeValue(o, width, 0xffffffff);
  assert.equal(cfg.u32(0x00), 0x12341af4);
  assert.equal(cfg.u32(0x08), 0x03000002);
  assert.equal(cfg.u8(Cfg.HEADER_TYPE), 0);
  assert.equal(
    cfg.u16(Cfg.COMMAND),
    0x0546,
    "only memory, bus master, parity, SERR and INTx-disable are writable",
  );
});

test("status: write-1-to-clear clears only the bits written as 1", () => {
  const cfg = header();
  cfg.set16(
    Cfg.STATUS,
    Status.CAP_LIST | Status.SIG_TARGET_ABORT | Status.REC_MASTER_ABORT | Status.SIG_SYSTEM_ERROR,
  );
  cfg.writeValue(Cfg.STATUS, 2, Status.REC_MASTER_ABORT);
  assert.equal(cfg.u16(Cfg.STATUS), Status.CAP_LIST | Status.SIG_TARGET_ABORT | Status.SIG_SYSTEM_ERROR);
  cfg.writeValue(Cfg.STATUS, 2, 0);
  assert.equal(
    cfg.u16(Cfg.STATUS),
    Status.CAP_LIST | Status.SIG_TARGET_ABORT | Status.SIG_SYSTEM_ERROR,
    "zeros change nothing",
  );
  cfg.writeValue(Cfg.STATUS, 2, 0xffff);
  assert.equal(cfg.u16(Cfg.STATUS), Status.CAP_LIST, "read-only bits survive an all-ones write");
});

test("BAR sizing read-back for 32-bit, 64-bit prefetchable, I/O BARs and the ROM", () => {
  const cfg = header(
    [
      { index: 0, size: 0x1000, kind: "mem32" },
      { index: 2, size: 0x4000_0000, kind: "mem64", prefetchable: true },
      { index: 4, size: 0x100, kind: "io" },
    ],
    0x10000,
  );
  assert.equal(cfg.u32(0x10), 0x0);
  assert.equal(cfg.u32(0x18), 0xc);
  assert.equal(cfg.u32(0x20), 0x1);
  for (const o of [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30]) cfg.writeValue(o, 4, 0xffffffff);
  assert.equal(cfg.u32(0x10), 0xfffff000);
  assert.equal(cfg.u32(0x14), 0, "unimplemented BAR");
  assert.equal(cfg.u32(0x18), 0xc000000c);
  assert.equal(cfg.u32(0x1c), 0xffffffff);
  assert.equal(cfg.u32(0x20), 0xffffff01);
  assert.equal(cfg.u32(0x24), 0);
  assert.equal(cfg.u32(0x30), 0xffff0001, "ROM: size mask and enable bit");
  cfg.writeValue(0x18, 4, 0x80000000);
  cfg.writeValue(0x1c, 4, 0x1);
  assert.equal(barAddress(cfg, { index: 2, size: 0x4000_0000, kind: "mem64" }), 0x1_8000_0000n);
  assert.throws(() => validateBars([{ index: 0, size: 0x1800, kind: "mem32" }]), /power of two/);
  assert.throws(() => validateBars([{ index: 5, size: 0x1000, kind: "mem64" }]), /BAR5/);
  assert.throws(
    () =>
      validateBars([
        { index: 0, size: 0x1000, kind: "mem64" },
        { index: 1, size: 0x1000, kind: "mem32" },
      ]),
    /twice/,
  );
});

test("writes must be 1, 2 or 4 bytes and naturally aligned; reads may span", () => {
  const cfg = header();
  const out = new Uint8Array(64);
  cfg.read(0, 64, out, 0);
  assert.equal(out[0], 0xf4);
  for (const [offset, count] of [
    [0x3d, 2],
    [0x11, 4],
    [0x10, 3],
    [0x10, 8],
    [0xfe, 4],
  ])
    assert.throws(() => cfg.write(offset!, count!, new Uint8Array(8), 0), VfioUserError);
  assert.throws(() => cfg.read(250, 8, out, 0), VfioUserError);
});

test("the capability chain links in order and a walker finds each capability", () => {
  const cfg = header();
  const chain = new CapabilityChain(cfg);
  const pm = new PowerManagement(cfg, chain, () => {});
  const msi = new MsiCapability(cfg, chain, 8, () => {});
  assert.equal(cfg.u8(Cfg.CAPABILITY_LIST), 0x40);
  assert.equal(cfg.u16(Cfg.STATUS) & Status.CAP_LIST, Status.CAP_LIST);
  assert.equal(pm.offset, 0x40);
  assert.equal(cfg.u8(0x41), msi.offset);
  assert.equal(cfg.u8(msi.offset + 1), 0, "last capability ends the list");
  const d = describeConfig(cfg.bytes);
  assert.deepEqual(
    d.capabilities.map((c) => [c.offset, c.name]),
    [
      [0x40, "Power Management"],
      [0x48, "MSI"],
    ],
  );
  assert.equal(d.capabilities[1]!.details.vectors, 8);
  // MSI: enable and multiple-message-enable are writable, capped at what the device has.
  cfg.writeValue(msi.offset + 2, 2, 0xffff);
  assert.equal(cfg.u16(msi.offset + 2), 0x0100 | 0x80 | (3 << 4) | (3 << 1) | 1);
  assert.equal(msi.enabledVectors, 8);
  cfg.writeValue(msi.offset + 16, 4, 0xffffffff);
  assert.equal(cfg.u32(msi.offset + 16), 0xff, "mask bits exist only for implemented vectors");
  cfg.writeValue(msi.offset + 20, 4, 0xffffffff);
  assert.equal(cfg.u32(msi.offset + 20), 0, "pending bits are read-only");
});

test("a looping or out-of-range capability pointer is reported, not followed", () => {
  const cfg = header();
  cfg.set16(Cfg.STATUS, Status.CAP_LIST);
  cfg.set8(Cfg.CAPABILITY_LIST, 0x40);
  cfg.set8(0x40, 0x05);
  cfg.set8(0x41, 0x40);
  assert.match(describeConfig(cfg.bytes).problems[0]!, /loops/);
  cfg.set8(0x41, 0x10);
  assert.match(describeConfig(cfg.bytes).problems[0]!, /outside/);
});

test("PM: D3hot→D0 soft-resets, D1/D2 writes are discarded", () => {
  const cfg = header();
  let resets = 0;
  const pm = new PowerManagement(cfg, new CapabilityChain(cfg), () => resets++);
  cfg.writeValue(pm.offset + 4, 2, 3);
  assert.equal(pm.powerState, 3);
  cfg.writeValue(pm.offset + 4, 2, 0);
  assert.equal(resets, 1);
  cfg.writeValue(pm.offset + 4, 2, 2);
  assert.equal(cfg.u16(pm.offset + 4) & 3, 0);
  assert.equal(resets, 1);
});
