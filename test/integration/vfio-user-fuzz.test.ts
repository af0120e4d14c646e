/**
 * Hostile input: at least 10,000 mutated messages against a live server. Every
 * message that keeps the framing must get exactly one reply (unless it asked for
 * none or was itself a reply), the connection must survive it, a bystander
 * connection must keep working throughout, and the server must leak no fds.
 * Messages that break framing (a size below the header) must close only their
 * own connection.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { EventFd, closeFd, createMemfd } from "../../src/sys/index.js";
import {
  Client,
  Command,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  HEADER_SIZE,
  PciRegion,
} from "../../src/vfio-user/index.js";
import { RawPeer, le, message } from "../support/raw-peer.js";
import { SAMPLE } from "../../src/samples/sample-device.js";
import { Prng } from "../support/prng.js";
import { type ServerProcess, startFixtureServer } from "../support/server-process.js";
import { quietLogger } from "../../src/base/index.js";

const MESSAGES = Number(process.env.MGPU_FUZZ_COUNT ?? 10_000);
const PING_ID = 0xffff;
const SAMPLE_ID = ((SAMPLE.deviceId << 16) | SAMPLE.vendorId) >>> 0;
const quiet = { logger: quietLogger };

/** Valid requests of every client command, as templates to mutate. */
function templates(rng: Prng): { command: number; payload: Buffer; fds: number }[] {
  const region = rng.pick([PciRegion.BAR0, PciRegion.BAR2, PciRegion.CONFIG, rng.int(12)]);
  const offset = rng.pick([0, 4, 8, 0x10, 0x40, rng.int(0x1000)]);
  return [
    { command: Command.DEVICE_GET_INFO, payload: le([32, 16], [32, 0], [32, 0], [32, 0]), fds: 0 },
    {
      command: Command.DEVICE_GET_REGION_INFO,
      payload: le([32, 64], [32, 0], [32, region], [32, 0], [64, 0], [64, 0]),
      fds: 0,
    },
    {
      command: Command.DEVICE_GET_IRQ_INFO,
      payload: le([32, 16], [32, 0], [32, rng.int(6)], [32, 0]),
      fds: 0,
    },
    {
      command: Command.DEVICE_GET_REGION_IO_FDS,
      payload: le([32, 64], [32, 0], [32, region], [32, 0]),
      fds: 0,
    },
    {
      command: Command.REGION_READ,
      payload: le([64, offset], [32, region], [32, rng.pick([1, 2, 4, 8, 64])]),
      fds: 0,
    },
    {
      command: Command.REGION_WRITE,
      payload: Buffer.concat([le([64, offset], [32, region], [32, 4]), rng.bytes(4)]),
      fds: 0,
    },
    {
      command: Command.REGION_WRITE_MULTI,
      payload: Buffer.concat([le([64, 1], [64, offset], [32, region], [32, 4]), rng.bytes(8)]),
      fds: 0,
    },
    {
      command: Command.DMA_MAP,
      payload: le([32, 32], [32, 3], [64, 0], [64, rng.int(64) * 0x1000], [64, 0x1000]),
      fds: rng.int(2),
    },
    { command: Command.DMA_UNMAP, payload: le([32, 24], [32, rng.pick([0, 2])], [64, 0], [64, 0]), fds: 0 },
    {
      command: Command.DEVICE_SET_IRQS,
      payload: le([32, 20], [32, 0x24], [32, rng.int(5)], [32, 0], [32, 1]),
      fds: 1,
    },
    { command: Command.DEVICE_RESET, payload: Buffer.alloc(0), fds: 0 },
    { command: Command.DEVICE_FEATURE, payload: le([32, 16], [32, (1 << 16) | rng.int(9)]), fds: 0 },
    { command: Command.MIG_DATA_READ, payload: le([32, 72], [32, 64]), fds: 0 },
    {
      command: Command.MIG_DATA_WRITE,
      payload: Buffer.concat([le([32, 12], [32, 4]), rng.bytes(4)]),
      fds: 0,
    },
    { command: Command.VERSION, payload: Buffer.from([0, 0, 0, 0, 0x7b, 0x7d, 0]), fds: 0 },
  ];
}

let server: ServerProcess;
before(async () => {
  server = await startFixtureServer("serve-two.js");
});
after(async () => {
  await server.stop();
});

test(`${MESSAGES} mutated messages get errno replies or a clean close, and nothing else is disturbed`, () => {
  const seed = Number(process.env.MGPU_FUZZ_SEED ?? 0x5eed);
  const rng = new Prng(seed);
  // The bystander is another vGPU's VMM on the same serving loop.
  const bystander = Client.connect(`${server.socketPath}-b`, quiet);
  const probe = () => {
    const out = new Uint8Array(4);
    bystander.regionRead(PciRegion.CONFIG, 0, out);
    assert.equal(Buffer.from(out).readUInt32LE(0), SAMPLE_ID, `bystander broken (seed ${seed})`);
  };
  probe();
  const baselineFds = server.fdCount();
  const memfd = createMemfd("fuzz", 0x1000);
  const eventfd = new EventFd();
  let peer = new RawPeer(server.socketPath);
  peer.handshake();
  const tally = { replied: 0, errors: 0, silent: 0, closes: 0, oversized: 0 };

  for (let i = 0; i < MESSAGES; i++) {
    const t = rng.pick(templates(rng));
    let payload = Buffer.from(t.payload);
    let command = t.command;
    let flags = 0;
    let fds = t.fds ? [t.command === Command.DMA_MAP ? memfd : eventfd.fd] : [];
    let sizeLie: number | undefined;
    switch (rng.int(10)) {
      case 0: // flip bits
        for (let k = 0; k < 1 + rng.int(4) && payload.length > 0; k++)
          payload[rng.int(payload.length)]! ^= 1 << rng.int(8);
        break;
      case 1: // truncate
        payload = payload.subarray(0, rng.int(payload.length + 1));
        break;
      case 2: // extend
        payload = Buffer.concat([payload, rng.bytes(1 + rng.int(64))]);
        break;
      case 3: // any command number
        command = rng.int(40);
        break;
      case 4: // any flags
        flags = rng.int(0x100);
        break;
      case 5: // fds where none belong, or too many
        fds = [eventfd.fd, memfd].slice(0, 1 + rng.int(2));
        break;
      case 6: // random payload of the right command
        payload = Buffer.from(rng.bytes(rng.int(80)));
        break;
      case 7: // argsz / count fields set to extremes
        if (payload.length >= 4)
          payload.writeUInt32LE(
            rng.pick([0, 1, 0xffffffff, 0x7fffffff]),
            rng.pick([0, Math.max(0, payload.length - 4)]),
          );
        break;
      case 8: // framing lies: a size below the header, or a rare oversized message
        if (rng.int(20) === 0) sizeLie = rng.int(HEADER_SIZE);
        else if (rng.int(50) === 0) payload = Buffer.alloc((1 << 20) + 4096 + rng.int(4096));
        break;
      default: // valid
        break;
    }
    const id = i % 0xfff0;
    const bytes = message(id, command, flags, payload);
    if (sizeLie !== undefined) bytes.writeUInt32LE(sizeLie, 4);
    peer.send(bytes, fds);
    if (sizeLie !== undefined) {
      // Framing is lost: the server must close this connection, and only this one.
      peer.readUntil(-1);
      assert.ok(peer.closedByServer, `size ${sizeLie} did not close the connection (seed ${seed})`);
      tally.closes++;
      peer.close();
      peer = new RawPeer(server.socketPath);
      peer.handshake();
      continue;
    }
    peer.send(message(PING_ID, Command.DEVICE_GET_INFO, 0, le([32, 16], [32, 0], [32, 0], [32, 0])));
    const replies = peer.readUntil(PING_ID);
    assert.ok(
      !peer.closedByServer,
      `connection closed after message ${i} (seed ${seed}, command ${command}, flags ${flags})`,
    );
    const mine = replies.filter((r) => r.id === id && r.id !== PING_ID);
    // Every message gets a reply unless it asked for none: a stray reply too (EINVAL).
    const expectReply = (flags & FLAG_NO_REPLY) === 0;
    assert.equal(mine.length, expectReply ? 1 : 0, `message ${i}: ${mine.length} replies (seed ${seed})`);
    if (mine[0]) {
      tally.replied++;
      if (mine[0].flags & FLAG_ERROR) {
        tally.errors++;
        assert.ok(mine[0].error > 0, "an error reply carries an errno");
        assert.equal(mine[0].size, HEADER_SIZE, "an error reply is only a header");
      }
      if (payload.length > 1 << 20) tally.oversized++;
    } else tally.silent++;
    if (i % 1000 === 999) probe();
  }
  peer.close();
  probe();
  bystander.close();
  closeFd(memfd);
  eventfd.close();
  // Everything the hostile connections passed in was closed by the server.
  const deadline = Date.now() + 2000;
  while (server.fdCount() > baselineFds - 1 && Date.now() < deadline)
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  assert.ok(
    server.fdCount() <= baselineFds - 1,
    `server holds ${server.fdCount()} fds, had ${baselineFds} with the bystander`,
  );
  assert.ok(tally.errors > 1000 && tally.replied - tally.errors > 1000, JSON.stringify(tally));
  assert.ok(tally.closes > 0 && tally.oversized > 0, JSON.stringify(tally));
  assert.equal(server.child.exitCode, null, "server still running");
});
