import { test } from "node:test";
import assert from "node:assert/strict";
import { parseCapabilities, serializeCapabilities } from "./capabilities.js";
import {
  DMA_UNMAP_FLAG_ALL,
  DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  IRQ_SET_ACTION_MASK,
  IRQ_SET_ACTION_TRIGGER,
  IRQ_SET_DATA_BOOL,
  IRQ_SET_DATA_EVENTFD,
  IRQ_SET_DATA_NONE,
} from "./constants.js";
import { VfioUserError } from "./errors.js";
import {
  PayloadReader,
  PayloadWriter,
  type RegionInfo,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeIoFds,
  decodeRegionInfo,
  decodeSetIrqs,
  decodeVersion,
  decodeWriteMulti,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeIoFds,
  encodeRegionInfo,
  encodeSetIrqs,
  encodeVersion,
  encodeWriteMulti,
} from "./messages.js";

function roundTrip<T>(encode: (w: PayloadWriter) => void, decode: (r: PayloadReader) => T): T {
  const view = new DataView(new ArrayBuffer(4096));
  const w = new PayloadWriter(view, 0, 4096);
  encode(w);
  return decode(new PayloadReader(view, 0, w.length));
}

function bytes(...values: number[]): PayloadReader {
  return new PayloadReader(new DataView(new Uint8Array(values).buffer), 0, values.length);
}

const isEinval = (e: unknown) => e instanceof VfioUserError && e.code === "EINVAL";

test("VERSION carries the JSON with its terminating NUL", () => {
  const v = roundTrip(
    (w) => encodeVersion(w, { major: 0, minor: 0, json: '{"capabilities":{}}' }),
    decodeVersion,
  );
  assert.deepEqual(v, { major: 0, minor: 0, json: '{"capabilities":{}}' });
  assert.deepEqual(
    roundTrip((w) => encodeVersion(w, { major: 0, minor: 1 }), decodeVersion),
    { major: 0, minor: 1 },
  );
  assert.throws(() => decodeVersion(bytes(0, 0, 0, 0, 0x7b, 0x7d)), isEinval, "JSON without NUL");
  assert.throws(() => decodeVersion(bytes(0, 0, 0)), isEinval, "truncated");
});

test("capabilities take spec defaults and reject wrong types", () => {
  const d = parseCapabilities(undefined);
  assert.equal(d.maxMsgFds, 1);
  assert.equal(d.maxDataXferSize, 1 << 20);
  assert.equal(d.pgsizes, 4096);
  const qemu = parseCapabilities(
    JSON.stringify({
      capabilities: {
        max_msg_fds: 16,
        max_data_xfer_size: 1048576,
        pgsizes: 4096,
        max_dma_maps: 65535,
        write_multiple: true,
        migration: { pgsize: 4096, max_bitmap_size: 1048576 },
      },
    }),
  );
  assert.equal(qemu.maxMsgFds, 16);
  assert.equal(qemu.writeMultiple, true);
  assert.deepEqual(qemu.migration, { pgsize: 4096, maxBitmapSize: 1048576 });
  assert.deepEqual(parseCapabilities(serializeCapabilities(qemu)), qemu);
  for (const bad of [
    "[]",
    "not json",
    '{"capabilities":[]}',
    '{"capabilities":{"max_msg_fds":-1}}',
    '{"capabilities":{"max_msg_fds":1.5}}',
    '{"capabilities":{"max_data_xfer_size":0}}',
    '{"capabilities":{"write_multiple":"yes"}}',
    '{"capabilities":{"twin_socket":{"supported":1}}}',
    '{"capabilities":{"twin_socket":{"supported":true,"fd_index":-2}}}',
  ])
    assert.throws(() => parseCapabilities(bad), isEinval, bad);
});

test("DMA_MAP round-trips and refuses unknown flags or a wrong argsz", () => {
  const m = { flags: 3, offset: 0x1000n, address: 0xfeed0000n, size: 0x20000n };
  assert.deepEqual(
    roundTrip((w) => encodeDmaMap(w, m), decodeDmaMap),
    m,
  );
  assert.throws(() => roundTrip((w) => encodeDmaMap(w, { ...m, flags: 4 }), decodeDmaMap), isEinval);
  const view = new DataView(new ArrayBuffer(32));
  view.setUint32(0, 24, true);
  assert.throws(() => decodeDmaMap(new PayloadReader(view, 0, 32)), isEinval);
});

test("DMA_UNMAP: exact, all, and with a dirty bitmap", () => {
  const plain = { argsz: 24, flags: 0, address: 0x1000n, size: 0x2000n };
  assert.deepEqual(
    roundTrip((w) => encodeDmaUnmap(w, plain), decodeDmaUnmap),
    plain,
  );
  const all = { argsz: 24, flags: DMA_UNMAP_FLAG_ALL, address: 0n, size: 0n };
  assert.deepEqual(
    roundTrip((w) => encodeDmaUnmap(w, all), decodeDmaUnmap),
    all,
  );
  assert.throws(
    () => roundTrip((w) => encodeDmaUnmap(w, { ...all, address: 4096n }), decodeDmaUnmap),
    isEinval,
  );
  const dirty = {
    argsz: 24 + 16 + 8,
    flags: DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    address: 0n,
    size: 0x40000n,
    bitmap: { pgsize: 4096n, size: 8 },
  };
  assert.deepEqual(
    roundTrip((w) => encodeDmaUnmap(w, dirty), decodeDmaUnmap),
    dirty,
  );
  assert.throws(
    () => roundTrip((w) => encodeDmaUnmap(w, { ...dirty, argsz: 40 }), decodeDmaUnmap),
    isEinval,
    "argsz too small for the bitmap",
  );
  assert.throws(
    () =>
      roundTrip(
        (w) => encodeDmaUnmap(w, { ...dirty, flags: DMA_UNMAP_FLAG_ALL | DMA_UNMAP_FLAG_GET_DIRTY_BITMAP }),
        decodeDmaUnmap,
      ),
    isEinval,
  );
});

test("region info carries the sparse-mmap and type capabilities, only when argsz allows", () => {
  const info: RegionInfo = {
    index: 0,
    flags: 7,
    size: 0x100000,
    offset: 0,
    sparseMmap: [
      { offset: 0, size: 0x1000 },
      { offset: 0x8000, size: 0x8000 },
    ],
    type: { type: 1, subtype: 1 },
  };
  const full = roundTrip((w) => encodeRegionInfo(w, 1024, info), decodeRegionInfo);
  assert.equal(full.argsz, 32 + 16 + 32 + 16);
  assert.equal(full.flags, 7 | 8);
  assert.deepEqual(full.sparseMmap, info.sparseMmap);
  assert.deepEqual(full.type, info.type);
  const short = roundTrip((w) => encodeRegionInfo(w, 32, info), decodeRegionInfo);
  assert.equal(short.argsz, full.argsz, "argsz tells the client how much room to ask for");
  assert.equal(short.hasCaps, false);
  assert.equal(short.flags, 7, "no CAPS flag without the chain (QEMU refuses that)");
  assert.equal(short.sparseMmap, undefined);
  // A capability chain that points back at itself is refused, not followed forever.
  const view = new DataView(new ArrayBuffer(64));
  view.setUint32(12, 32, true); // cap_offset
  view.setUint16(32, 99, true);
  view.setUint32(36, 32, true); // next → itself
  assert.throws(() => decodeRegionInfo(new PayloadReader(view, 0, 64)), isEinval);
});

test("SET_IRQS accepts exactly one data type and one action, and matching fds", () => {
  const trig = { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: 2, start: 0, count: 4 };
  assert.deepEqual(
    roundTrip(
      (w) => encodeSetIrqs(w, trig),
      (r) => decodeSetIrqs(r, 4),
    ),
    trig,
  );
  assert.deepEqual(
    roundTrip(
      (w) => encodeSetIrqs(w, trig),
      (r) => decodeSetIrqs(r, 0),
    ),
    trig,
    "no fds: de-assign",
  );
  assert.throws(
    () =>
      roundTrip(
        (w) => encodeSetIrqs(w, trig),
        (r) => decodeSetIrqs(r, 3),
      ),
    isEinval,
  );
  const bools = {
    flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK,
    index: 2,
    start: 1,
    count: 3,
    bools: new Uint8Array([1, 0, 1]),
  };
  const got = roundTrip(
    (w) => encodeSetIrqs(w, bools),
    (r) => decodeSetIrqs(r, 0),
  );
  assert.deepEqual([...got.bools!], [1, 0, 1]);
  for (const flags of [
    IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_NONE,
    IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER | 0x100,
  ])
    assert.throws(
      () =>
        roundTrip(
          (w) => encodeSetIrqs(w, { ...trig, flags }),
          (r) => decodeSetIrqs(r, 0),
        ),
      isEinval,
    );
  assert.throws(
    () =>
      roundTrip(
        (w) =>
          encodeSetIrqs(w, {
            flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            index: 0,
            start: 0,
            count: 1,
          }),
        (r) => decodeSetIrqs(r, 1),
      ),
    isEinval,
    "fds with DATA_NONE",
  );
});

test("REGION_WRITE_MULTI holds 1..16 writes of 1..8 bytes", () => {
  const writes = [
    { offset: 0x10, region: 2, count: 4, data: new Uint8Array([1, 2, 3, 4]) },
    { offset: 0x20, region: 2, count: 8, data: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) },
  ];
  const got = roundTrip((w) => encodeWriteMulti(w, writes), decodeWriteMulti);
  assert.deepEqual(
    got.map((g) => ({ ...g, data: [...g.data] })),
    writes.map((g) => ({ ...g, data: [...g.data] })),
  );
  assert.throws(() => decodeWriteMulti(bytes(0, 0, 0, 0, 0, 0, 0, 0)), isEinval, "zero writes");
});

test("I/O fd sub-regions round-trip", () => {
  const subs = [{ offset: 8, size: 4, fdIndex: 0, type: 0, flags: 1, data: 0x1234n }];
  const got = roundTrip((w) => encodeIoFds(w, 1024, 0, subs), decodeIoFds);
  assert.deepEqual(got.subRegions, subs);
  assert.equal(got.argsz, 16 + 40);
});
