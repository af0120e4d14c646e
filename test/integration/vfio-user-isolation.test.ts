/**
 * One client must not stall, exhaust or change what another is served (issue 12
 * and issue 14's session policy), through real sockets against one Server loop
 * that serves two devices, as the daemon serves several vGPUs.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EventFd, createMemfd, closeFd } from "../../src/sys/index.js";
import {
  Client,
  Command,
  Errno,
  FLAG_ERROR,
  PciIrq,
  PciRegion,
  REGION_INFO_FLAG_MMAP,
  Server,
} from "../../src/vfio-user/index.js";
import { SAMPLE, SampleDevice } from "../../src/samples/sample-device.js";
import { quietLogger } from "../../src/base/index.js";
import { RawPeer, le, message, versionPayload } from "../support/raw-peer.js";
import { clientThatStopsReading } from "../support/vmm-scenarios.js";
import { type ServerProcess, startFixtureServer } from "../support/server-process.js";

const SAMPLE_ID = ((SAMPLE.deviceId << 16) | SAMPLE.vendorId) >>> 0;
const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };

const LIMITS = { negotiationTimeoutMs: 1500, maxDmaMappings: 16, maxClientFds: 4 };
let server: ServerProcess;
before(async () => {
  server = await startFixtureServer("serve-two.js", [], {
    env: { MGPU_SERVER_OPTIONS: JSON.stringify(LIMITS) },
  });
});
after(async () => {
  await server.stop();
});

const deviceB = () => `${server.socketPath}-b`;

/** Worst latency of `n` config-space reads (vendor and device id) by `c`, in ms. */
function worstRead(c: Client, n: number): number {
  let worst = 0;
  const out = new Uint8Array(4);
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    c.regionRead(PciRegion.CONFIG, 0, out);
    worst = Math.max(worst, performance.now() - t0);
    assert.equal(Buffer.from(out).readUInt32LE(0), SAMPLE_ID, "the bystander read the wrong bytes");
  }
  return worst;
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

test("a client that pipelines 8 x 1 MiB REGION_READs and never reads is disconnected; another vGPU's reads are answered at once", (t) => {
  const bystander = Client.connect(deviceB(), quiet);
  worstRead(bystander, 10);
  const baseline = server.fdCount();
  const hog = clientThatStopsReading(server.socketPath);
  const worst = worstRead(bystander, 200);
  t.diagnostic(`bystander worst read while the hog was served: ${worst.toFixed(2)} ms`);
  assert.ok(worst < 1000, `bystander waited ${worst.toFixed(1)} ms`);
  // The hog is cut off: reading now finds what the kernel held, then the end of the stream.
  hog.readUntil(-1);
  assert.ok(hog.closedByServer, "the client that stopped reading is still connected");
  hog.close();
  worstRead(bystander, 10);
  const deadline = Date.now() + 2000;
  while (server.fdCount() > baseline && Date.now() < deadline) sleep(20);
  assert.equal(server.fdCount(), baseline, "the hog's connection left fds behind");
  bystander.close();
});

/** Connects and sends VERSION: "served" if it was answered, "closed" if the server shut the connection. */
function tryConnect(path: string): { peer: RawPeer; outcome: "served" | "closed" } {
  const peer = new RawPeer(path);
  try {
    peer.send(message(1, Command.VERSION, 0, versionPayload({})));
    const r = peer.readUntil(1);
    return { peer, outcome: r.length > 0 && !(r[0]!.flags & FLAG_ERROR) ? "served" : "closed" };
  } catch {
    return { peer, outcome: "closed" };
  }
}

const getInfo = () => le([32, 16], [32, 0], [32, 0], [32, 0]);

test("one vGPU's idle connections cannot use up another's; a connection that never negotiates is closed", () => {
  const idle = Array.from({ length: 20 }, () => new RawPeer(server.socketPath));
  // Only the first 8 are kept; the rest are closed at once.
  idle[19]!.readUntil(-1);
  assert.ok(idle[19]!.closedByServer, "the 20th idle connection to one device was kept");
  assert.equal(idle[0]!.ch.recv(0, 16, false), -1, "a connection within the limit is kept until its timeout");
  const other = Client.connect(deviceB(), quiet);
  worstRead(other, 5);
  other.close();
  // The kept ones never sent VERSION: closed after the negotiation timeout.
  const t0 = performance.now();
  idle[0]!.readUntil(-1);
  assert.ok(idle[0]!.closedByServer);
  const waited = performance.now() - t0;
  assert.ok(waited < 5000, `idle connection kept ${waited.toFixed(0)} ms`);
  for (const p of idle) p.close();
  const again = tryConnect(server.socketPath);
  assert.equal(again.outcome, "served", "the device takes connections again");
  again.peer.close();
});

test("DMA mappings and held fds per client are capped with an errno reply", () => {
  const peer = new RawPeer(server.socketPath);
  const version = peer.handshake();
  const json = JSON.parse(version.payload.subarray(4, version.payload.length - 1).toString()) as {
    capabilities: { max_dma_maps: number };
  };
  assert.equal(json.capabilities.max_dma_maps, LIMITS.maxDmaMappings, "the limit is advertised");
  const memfd = createMemfd("guest", LIMITS.maxDmaMappings * 0x2000 + 0x2000);
  const map = (i: number) =>
    peer.request(
      10 + i,
      Command.DMA_MAP,
      le([32, 32], [32, 3], [64, i * 0x2000], [64, 0x100000 + i * 0x2000], [64, 0x1000]),
      {
        fds: [memfd],
      },
    );
  const before = server.fdCount();
  for (let i = 0; i < LIMITS.maxDmaMappings; i++) assert.equal(map(i).flags & FLAG_ERROR, 0, `map ${i}`);
  assert.equal(server.fdCount(), before, "a DMA window holds no fd in the daemon");
  const over = map(LIMITS.maxDmaMappings);
  assert.equal(over.error, Errno.ENOSPC);
  closeFd(memfd);
  // Eventfds: 4 for the MSI-X vectors fill the quota; one more is refused.
  const evs = Array.from({ length: 5 }, () => new EventFd());
  const setIrqs = (id: number, index: number, count: number, fds: number[]) =>
    peer.request(id, Command.DEVICE_SET_IRQS, le([32, 20], [32, 0x24], [32, index], [32, 0], [32, count]), {
      fds,
    });
  assert.equal(
    setIrqs(
      40,
      PciIrq.MSIX,
      4,
      evs.slice(0, 4).map((e) => e.fd),
    ).flags & FLAG_ERROR,
    0,
  );
  assert.equal(setIrqs(41, PciIrq.ERR, 1, [evs[4]!.fd]).error, Errno.EMFILE);
  peer.close();
  for (const e of evs) e.close();
});

test("a second client on a vGPU's socket is a read-only observer: it cannot change the owner's device", () => {
  const owner = Client.connect(server.socketPath, quiet);
  const scratch = new Uint8Array([0x78, 0x56, 0x34, 0x12]);
  owner.regionWrite(PciRegion.CONFIG, 4, new Uint8Array([0x06, 0]));
  owner.regionWrite(PciRegion.BAR0, 4, scratch);
  const observer = new RawPeer(server.socketPath);
  observer.handshake();
  // Allowed: what the device is, and its config space.
  assert.equal(observer.request(2, Command.DEVICE_GET_INFO, getInfo()).flags & FLAG_ERROR, 0);
  const bar2 = observer.request(
    3,
    Command.DEVICE_GET_REGION_INFO,
    le([32, 32], [32, 0], [32, PciRegion.BAR2], [32, 0], [64, 0], [64, 0]),
  );
  assert.equal(bar2.flags & FLAG_ERROR, 0);
  assert.equal(
    bar2.payload.readUInt32LE(4) & REGION_INFO_FLAG_MMAP,
    0,
    "an observer is offered nothing to map",
  );
  assert.equal(
    observer.request(4, Command.DEVICE_GET_IRQ_INFO, le([32, 16], [32, 0], [32, 2], [32, 0])).flags &
      FLAG_ERROR,
    0,
  );
  const cfg = observer.request(5, Command.REGION_READ, le([64, 0], [32, PciRegion.CONFIG], [32, 4]));
  assert.equal(cfg.payload.readUInt32LE(16), SAMPLE_ID);
  // Refused with EBUSY: everything that changes state, and BAR reads.
  const memfd = createMemfd("guest", 0x1000);
  const refused: [string, number, Buffer, number[]?][] = [
    ["DEVICE_RESET", Command.DEVICE_RESET, Buffer.alloc(0)],
    [
      "config write",
      Command.REGION_WRITE,
      Buffer.concat([le([64, 4], [32, PciRegion.CONFIG], [32, 2]), le([16, 0])]),
    ],
    [
      "BAR0 write",
      Command.REGION_WRITE,
      Buffer.concat([le([64, 4], [32, PciRegion.BAR0], [32, 4]), le([32, 0])]),
    ],
    ["BAR0 read", Command.REGION_READ, le([64, 4], [32, PciRegion.BAR0], [32, 4])],
    ["DMA_MAP", Command.DMA_MAP, le([32, 32], [32, 3], [64, 0], [64, 0x100000], [64, 0x1000]), [memfd]],
    ["DMA_UNMAP", Command.DMA_UNMAP, le([32, 24], [32, 2], [64, 0], [64, 0])],
    ["SET_IRQS", Command.DEVICE_SET_IRQS, le([32, 20], [32, 0x21], [32, PciIrq.MSIX], [32, 0], [32, 0])],
    ["DEVICE_FEATURE", Command.DEVICE_FEATURE, le([32, 16], [32, (2 << 16) | 8], [32, 2], [32, 0])],
    ["MIG_DATA_READ", Command.MIG_DATA_READ, le([32, 72], [32, 64])],
    ["GET_REGION_IO_FDS", Command.DEVICE_GET_REGION_IO_FDS, le([32, 64], [32, 0], [32, 0], [32, 0])],
  ];
  refused.forEach(([what, command, payload, fds], i) => {
    const r = observer.request(20 + i, command, payload, fds ? { fds } : {});
    assert.equal(r.error, Errno.EBUSY, `${what}: errno ${r.error}`);
  });
  closeFd(memfd);
  // The owner's device is as it left it.
  const out = new Uint8Array(4);
  owner.regionRead(PciRegion.BAR0, 4, out);
  assert.deepEqual(out, scratch);
  owner.regionRead(PciRegion.CONFIG, 4, out);
  assert.equal(out[0]! & 0x06, 0x06, "command register kept");
  observer.close();
  owner.close();
});

test("Endpoint says whether an owner is attached", () => {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-owner-"));
  const path = join(dir, "dev.sock");
  const device = new SampleDevice();
  const server = new Server(undefined, { logger: quietLogger });
  const endpoint = server.addDevice(device.pci, path);
  const round = () => {
    for (let i = 0; i < 3; i++) server.runOnce(20);
  };
  assert.equal(endpoint.ownerAttached, false);
  const owner = new RawPeer(path);
  owner.send(message(1, Command.VERSION, 0, versionPayload({})));
  round();
  assert.equal(owner.readUntil(1).length, 1);
  assert.equal(endpoint.ownerAttached, true);
  const second = new RawPeer(path);
  second.send(message(1, Command.VERSION, 0, versionPayload({})));
  round();
  second.readUntil(1);
  assert.equal(endpoint.observers, 1);
  owner.close();
  round();
  assert.equal(endpoint.ownerAttached, false, "the owner left");
  second.close();
  round();
  assert.equal(endpoint.observers, 0);
  server.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

test("out of fds, the server refuses the connection it cannot take and keeps serving", async () => {
  const limited = await startFixtureServer("serve-two.js", [], {
    nofile: 48,
    env: { MGPU_SERVER_OPTIONS: JSON.stringify({ maxConnectionsPerDevice: 64, maxConnections: 256 }) },
  });
  try {
    const peers: RawPeer[] = [];
    const outcomes = { served: 0, closed: 0 };
    for (let i = 0; i < 60; i++) {
      const { peer, outcome } = tryConnect(i % 2 ? `${limited.socketPath}-b` : limited.socketPath);
      outcomes[outcome]++;
      peers.push(peer);
    }
    assert.ok(outcomes.closed > 0 && outcomes.served > 0, JSON.stringify(outcomes));
    assert.equal(limited.child.exitCode, null, "the server died");
    assert.match(limited.stderr(), /out of file descriptors/);
    for (const p of peers) p.close();
    sleep(100);
    const c = Client.connect(`${limited.socketPath}-b`, quiet);
    worstRead(c, 5);
    c.close();
  } finally {
    await limited.stop();
  }
});
