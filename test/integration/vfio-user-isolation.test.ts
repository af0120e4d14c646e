/**
 * One client must not stall, exhaust or change what another is served (issue 12
 * and issue 14's session policy), through real sockets against one Server loop
 * that serves two devices, as the daemon serves several vGPUs.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { SAMPLE } from "../../src/samples/sample-device.js";
import { Client, Command, FLAG_ERROR, PciRegion } from "../../src/vfio-user/index.js";
import { RawPeer, le, message } from "../support/raw-peer.js";
import { type ServerProcess, startFixtureServer } from "../support/server-process.js";

const SAMPLE_ID = ((SAMPLE.deviceId << 16) | SAMPLE.vendorId) >>> 0;
const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };

let server: ServerProcess;
before(async () => {
  server = await startFixtureServer("serve-two.js");
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
  const hog = new RawPeer(server.socketPath);
  hog.handshake();
  // Memory decoding on, so BAR2 (1 MiB) can be read.
  const r = hog.request(
    2,
    Command.REGION_WRITE,
    Buffer.concat([le([64, 4], [32, PciRegion.CONFIG], [32, 2]), le([16, 2])]),
  );
  assert.equal(r.flags & FLAG_ERROR, 0);
  for (let i = 0; i < 8; i++)
    hog.send(message(10 + i, Command.REGION_READ, 0, le([64, 0], [32, PciRegion.BAR2], [32, 1 << 20])));
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
