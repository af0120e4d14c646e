/**
 * Mutated vfio-user messages against a live server that serves two devices
 * from one loop (as the daemon serves several vGPUs). The offender speaks to
 * device A as its owner, a second connection to A is a read-only observer that
 * gets its share of the mutated messages, and a bystander is device B's VMM.
 *
 * Rules checked on every message: a message that keeps the framing gets exactly
 * one reply unless it asked for none (an error reply is a bare header with an
 * errno), and its connection survives; a message that breaks the framing (a size
 * below the header) closes only its own connection; the server never exits; the
 * bystander's reads are answered throughout; at the end the server holds no
 * more fds than before. A violation throws FuzzFailure with the seed.
 */
import { EventFd, closeFd, createMemfd } from "../../src/sys/index.js";
import {
  Client,
  Command,
  DEVICE_FEATURE_GET,
  DEVICE_FEATURE_PROBE,
  DEVICE_FEATURE_SET,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  Feature,
  HEADER_SIZE,
  PciRegion,
} from "../../src/vfio-user/index.js";
import { SAMPLE } from "../../src/samples/sample-device.js";
import { MgpuError, quietLogger } from "../../src/base/index.js";
import { Prng } from "../support/prng.js";
import { RawPeer, le, message } from "../support/raw-peer.js";

export const SAMPLE_ID = ((SAMPLE.deviceId << 16) | SAMPLE.vendorId) >>> 0;
const PING_ID = 0xffff;

export class FuzzFailure extends MgpuError {
  constructor(message: string) {
    super("EFUZZ", message);
  }
}

export interface FuzzTarget {
  /** Device A (fuzzed) and device B (the bystander's). */
  readonly socketPath: string;
  readonly bystanderPath: string;
  /** Open fds of the server process now. */
  fdCount(): number;
  /** False once the server process has exited. */
  alive(): boolean;
}

export interface FuzzOptions {
  readonly messages: number;
  readonly seed: number;
  /** Called every `progressEvery` messages (for the CLI). */
  readonly onProgress?: (done: number, result: FuzzResult) => void;
  readonly progressEvery?: number;
}

export interface FuzzResult {
  messages: number;
  /** Messages that got their reply, and how many of those were errno replies. */
  replied: number;
  errors: number;
  /** Messages that asked for no reply and got none. */
  silent: number;
  /** Connections closed by the server for a framing lie (and reopened). */
  closes: number;
  /** Messages over the server's size limit (answered E2BIG). */
  oversized: number;
  /** Messages sent through the read-only observer connection. */
  observerMessages: number;
  bystanderReads: number;
  worstBystanderMs: number;
  fdsBefore: number;
  fdsAfter: number;
  durationMs: number;
}

/** Valid requests of every client command, as templates to mutate. */
function templates(rng: Prng): { command: number; payload: Buffer; fds: "memfd" | "eventfd" | "none" }[] {
  const region = rng.pick([PciRegion.BAR0, PciRegion.BAR2, PciRegion.CONFIG, PciRegion.ROM, rng.int(12)]);
  const offset = rng.pick([0, 4, 8, 0x10, 0x40, rng.int(0x1000)]);
  const dmaAddress = rng.int(64) * 0x1000;
  const feature = (flags: number, ...data: [16 | 32 | 64, number | bigint][]) => {
    const body = le(...data);
    const argsz = rng.pick([8 + body.length, 8 + body.length + 64, rng.int(0x10000)]);
    return Buffer.concat([le([32, argsz], [32, flags]), body]);
  };
  return [
    { command: Command.DEVICE_GET_INFO, payload: le([32, 16], [32, 0], [32, 0], [32, 0]), fds: "none" },
    {
      command: Command.DEVICE_GET_REGION_INFO,
      payload: le([32, 64], [32, 0], [32, region], [32, 0], [64, 0], [64, 0]),
      fds: "none",
    },
    {
      command: Command.DEVICE_GET_IRQ_INFO,
      payload: le([32, 16], [32, 0], [32, rng.int(6)], [32, 0]),
      fds: "none",
    },
    {
      command: Command.DEVICE_GET_REGION_IO_FDS,
      payload: le([32, 64], [32, 0], [32, region], [32, 0]),
      fds: "none",
    },
    {
      command: Command.REGION_READ,
      payload: le([64, offset], [32, region], [32, rng.pick([1, 2, 4, 8, 64, 4096, rng.int(1 << 20) + 1])]),
      fds: "none",
    },
    {
      command: Command.REGION_WRITE,
      payload: Buffer.concat([le([64, offset], [32, region], [32, 4]), rng.bytes(4)]),
      fds: "none",
    },
    {
      // Programs the sample's DMA engine and rings it: the server then sends
      // DMA_READ/WRITE for windows mapped without an fd (the peer refuses them).
      command: Command.REGION_WRITE,
      payload: Buffer.concat([
        le([64, rng.pick([0x08, 0x10, 0x14, 0x18, 0x1c])], [32, PciRegion.BAR0], [32, 4]),
        le([32, rng.pick([1, 2, 3, dmaAddress, rng.int(0x10000)])]),
      ]),
      fds: "none",
    },
    {
      // Memory decoding and bus mastering on, so BAR accesses and the device's DMA happen.
      command: Command.REGION_WRITE,
      payload: Buffer.concat([
        le([64, 4], [32, PciRegion.CONFIG], [32, 2]),
        le([16, rng.pick([0x6, 0x2, 0])]),
      ]),
      fds: "none",
    },
    {
      command: Command.REGION_WRITE_MULTI,
      payload: Buffer.concat([le([64, 1], [64, offset], [32, region], [32, 4]), rng.bytes(8)]),
      fds: "none",
    },
    {
      command: Command.DMA_MAP,
      payload: le([32, 32], [32, 3], [64, 0], [64, dmaAddress], [64, rng.pick([0x1000, 0x2000])]),
      fds: rng.pick(["memfd", "none"] as const),
    },
    {
      command: Command.DMA_UNMAP,
      payload: le(
        [32, 24],
        [32, rng.pick([0, 2])],
        [64, rng.pick([0, dmaAddress])],
        [64, rng.pick([0, 0x1000])],
      ),
      fds: "none",
    },
    {
      command: Command.DEVICE_SET_IRQS,
      payload: le([32, 20], [32, 0x24], [32, rng.int(5)], [32, 0], [32, 1]),
      fds: "eventfd",
    },
    { command: Command.DEVICE_RESET, payload: Buffer.alloc(0), fds: "none" },
    {
      command: Command.DEVICE_FEATURE,
      payload: feature(rng.pick([DEVICE_FEATURE_GET, DEVICE_FEATURE_PROBE]) | rng.int(9)),
      fds: "none",
    },
    {
      command: Command.DEVICE_FEATURE,
      payload: feature(
        DEVICE_FEATURE_SET | Feature.DMA_LOGGING_START,
        [64, rng.pick([4096, 512, 4095, 1 << 21])],
        [32, 1],
        [32, 0],
        [64, dmaAddress],
        [64, rng.pick([0x1000, 0x100000, 2 ** 40])],
      ),
      fds: "none",
    },
    {
      command: Command.DEVICE_FEATURE,
      payload: feature(
        DEVICE_FEATURE_GET | Feature.DMA_LOGGING_REPORT,
        [64, dmaAddress],
        [64, rng.pick([0x1000, 0x10000, 2 ** 44])],
        [64, rng.pick([4096, 512, 3000])],
      ),
      fds: "none",
    },
    {
      command: Command.DEVICE_FEATURE,
      payload: feature(DEVICE_FEATURE_SET | Feature.MIG_DEVICE_STATE, [32, rng.int(10)], [32, 0]),
      fds: "none",
    },
    { command: Command.MIG_DATA_READ, payload: le([32, 72], [32, 64]), fds: "none" },
    {
      command: Command.MIG_DATA_WRITE,
      payload: Buffer.concat([le([32, 12], [32, 4]), rng.bytes(4)]),
      fds: "none",
    },
    { command: Command.VERSION, payload: Buffer.from([0, 0, 0, 0, 0x7b, 0x7d, 0]), fds: "none" },
  ];
}

export function runFuzz(target: FuzzTarget, options: FuzzOptions): FuzzResult {
  const { seed } = options;
  const rng = new Prng(seed);
  const fail = (what: string): never => {
    throw new FuzzFailure(`${what} (seed ${seed})`);
  };
  const started = performance.now();
  const result: FuzzResult = {
    messages: 0,
    replied: 0,
    errors: 0,
    silent: 0,
    closes: 0,
    oversized: 0,
    observerMessages: 0,
    bystanderReads: 0,
    worstBystanderMs: 0,
    fdsBefore: 0,
    fdsAfter: 0,
    durationMs: 0,
  };
  const bystander = Client.connect(target.bystanderPath, { logger: quietLogger });
  const out = new Uint8Array(4);
  const probe = () => {
    const t0 = performance.now();
    bystander.regionRead(PciRegion.CONFIG, 0, out);
    result.worstBystanderMs = Math.max(result.worstBystanderMs, performance.now() - t0);
    result.bystanderReads++;
    if (Buffer.from(out).readUInt32LE(0) !== SAMPLE_ID) fail("the bystander read the wrong bytes");
  };
  probe();
  result.fdsBefore = target.fdCount();
  const memfd = createMemfd("fuzz", 0x2000);
  const eventfd = new EventFd();
  const connect = (): RawPeer => {
    const p = new RawPeer(target.socketPath);
    p.handshake();
    return p;
  };
  let owner = connect();
  let observer = connect();
  try {
    for (let i = 0; i < options.messages; i++) {
      const t = rng.pick(templates(rng));
      let payload = Buffer.from(t.payload);
      let command = t.command;
      let flags = 0;
      let fds = t.fds === "memfd" ? [memfd] : t.fds === "eventfd" ? [eventfd.fd] : [];
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
        case 4: // any flags (the reply flag, no-reply, error, unknown types)
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
              rng.pick([0, 1, 0xffffffff, 0x7fffffff, (1 << 20) + 8]),
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
      const viaObserver = rng.int(10) === 0;
      const peer = viaObserver ? observer : owner;
      if (viaObserver) result.observerMessages++;
      const id = i % 0xfff0;
      const bytes = message(id, command, flags, payload);
      if (sizeLie !== undefined) bytes.writeUInt32LE(sizeLie, 4);
      peer.send(bytes, fds);
      result.messages++;
      if (sizeLie !== undefined) {
        // Framing is lost: the server must close this connection, and only this one.
        peer.readUntil(-1);
        if (!peer.closedByServer) fail(`size ${sizeLie} did not close the connection`);
        result.closes++;
        peer.close();
        // A new owner takes the device the closed one held; the observer stays one.
        if (viaObserver) observer = connect();
        else owner = connect();
        continue;
      }
      peer.send(message(PING_ID, Command.DEVICE_GET_INFO, 0, le([32, 16], [32, 0], [32, 0], [32, 0])));
      const replies = peer.readUntil(PING_ID);
      if (peer.closedByServer)
        fail(
          `connection closed after message ${i} (command ${command}, flags ${flags}, observer ${viaObserver})`,
        );
      const mine = replies.filter((r) => r.id === id);
      const expectReply = (flags & FLAG_NO_REPLY) === 0;
      if (mine.length !== (expectReply ? 1 : 0)) fail(`message ${i}: ${mine.length} replies`);
      const reply = mine[0];
      if (reply) {
        result.replied++;
        if (reply.flags & FLAG_ERROR) {
          result.errors++;
          if (reply.error === 0) fail(`message ${i}: an error reply without an errno`);
          if (reply.size !== HEADER_SIZE) fail(`message ${i}: an error reply with a payload`);
        }
        if (payload.length > 1 << 20) result.oversized++;
      } else result.silent++;
      if (!target.alive()) fail(`the server exited after message ${i}`);
      if (i % 1000 === 999) probe();
      if (options.onProgress && i % (options.progressEvery ?? 100_000) === 0 && i > 0)
        options.onProgress(i, result);
    }
  } finally {
    owner.close();
    observer.close();
    closeFd(memfd);
    eventfd.close();
  }
  probe();
  // Everything the hostile connections passed in was closed by the server.
  const deadline = Date.now() + 2000;
  while (target.fdCount() > result.fdsBefore && Date.now() < deadline)
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  result.fdsAfter = target.fdCount();
  bystander.close();
  result.durationMs = performance.now() - started;
  if (result.fdsAfter > result.fdsBefore)
    fail(`server holds ${result.fdsAfter} fds, had ${result.fdsBefore}`);
  if (!target.alive()) fail("the server exited");
  return result;
}
