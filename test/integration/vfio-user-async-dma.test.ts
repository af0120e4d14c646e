/**
 * Issue 12's "no waiting on one client", protocol side: a device's DMA to
 * memory the VMM serves by messages goes out as one pipelined batch, the loop
 * serves everyone (that VMM included) while the replies are outstanding, and a
 * reply that never comes fails that device alone after the timeout.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Client, Command, FLAG_TYPE_REPLY, PciRegion } from "../../src/vfio-user/index.js";
import { Reg, SAMPLE, checksum } from "../../src/samples/sample-device.js";
import { RawPeer, le, message } from "../support/raw-peer.js";
import { DMA_WINDOW, answerHeldDma, vmmSittingOnDma } from "../support/vmm-scenarios.js";
import { type ServerProcess, startFixtureServer } from "../support/server-process.js";

const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };
const TIMEOUT_MS = 1500;
const SAMPLE_ID = ((SAMPLE.deviceId << 16) | SAMPLE.vendorId) >>> 0;

let server: ServerProcess;
before(async () => {
  server = await startFixtureServer("serve-two.js", [], {
    env: { MGPU_SERVER_OPTIONS: JSON.stringify({ timeoutMs: TIMEOUT_MS }) },
  });
});
after(async () => {
  await server.stop();
});

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

const slowVmm = () => vmmSittingOnDma(server.socketPath, 4);

function readReg(vmm: RawPeer, id: number, offset: number): number {
  return vmm
    .request(id, Command.REGION_READ, le([64, offset], [32, PciRegion.BAR0], [32, 4]))
    .payload.readUInt32LE(16);
}

function worstBystanderRead(c: Client, forMs: number): number {
  let worst = 0;
  const out = new Uint8Array(4);
  for (const end = performance.now() + forMs; performance.now() < end;) {
    const t0 = performance.now();
    c.regionRead(PciRegion.CONFIG, 0, out);
    worst = Math.max(worst, performance.now() - t0);
    assert.equal(Buffer.from(out).readUInt32LE(0), SAMPLE_ID);
    sleep(5);
  }
  return worst;
}

test("a VMM that sits on a DMA_READ for a second parks only its device; 8 pages go out as one request", (t) => {
  const bystander = Client.connect(`${server.socketPath}-b`, quiet);
  const vmm = slowVmm();
  // The VMM itself is served while its DMA is outstanding.
  assert.equal(readReg(vmm, 8, Reg.STATUS) & 1, 0, "the device is still busy");
  while (vmm.requests.length === 0) vmm.readUntil(-1, { orRequest: true });
  assert.equal(vmm.requests.length, 1, `the batch went out as ${vmm.requests.length} messages`);
  const req = vmm.requests[0]!;
  assert.equal(req.command, Command.DMA_READ);
  assert.equal(req.payload.readBigUInt64LE(0), 0x100000n);
  assert.equal(req.payload.readBigUInt64LE(8), 0x8000n);
  const worst = worstBystanderRead(bystander, 1000);
  t.diagnostic(`bystander worst read while another VMM sat on a DMA_READ: ${worst.toFixed(2)} ms`);
  assert.ok(worst < 1000, `bystander waited ${worst.toFixed(1)} ms`);
  // The VMM answers at last: the device completes.
  const fill = (i: number) => (i * 13) & 0xff;
  answerHeldDma(vmm, fill);
  const data = Uint8Array.from({ length: DMA_WINDOW.size }, (_, i) => fill(i));
  assert.equal(readReg(vmm, 9, Reg.STATUS) & 1, 1, "the device finished");
  assert.equal(readReg(vmm, 10, Reg.ERROR), 0);
  assert.equal(readReg(vmm, 11, Reg.CHECKSUM), checksum(data));
  vmm.close();
  bystander.close();
});

test("a DMA reply that never comes fails that device alone with ETIMEDOUT", () => {
  const bystander = Client.connect(`${server.socketPath}-b`, quiet);
  const vmm = slowVmm();
  const worst = worstBystanderRead(bystander, TIMEOUT_MS + 300);
  assert.ok(worst < 1000, `bystander waited ${worst.toFixed(1)} ms`);
  assert.equal(readReg(vmm, 8, Reg.ERROR), 110, "ETIMEDOUT in the device's error register");
  assert.equal(readReg(vmm, 9, Reg.STATUS) & 1, 1);
  // A late reply is no longer ours: refused with EINVAL, the session goes on.
  const req = vmm.requests[0]!;
  const late = vmm.request(req.id, Command.DMA_READ, Buffer.alloc(0), { flags: FLAG_TYPE_REPLY });
  assert.ok(late.error > 0);
  assert.equal(readReg(vmm, 10, Reg.ERROR), 110);
  vmm.close();
  bystander.close();
});

test("a client that floods requests while the server waits on its DMA reply is disconnected", () => {
  const vmm = vmmSittingOnDma(server.socketPath, 2); // synchronous: the loop waits for the reply
  const write = Buffer.concat([le([64, 0], [32, PciRegion.BAR2], [32, 1 << 20]), Buffer.alloc(1 << 20)]);
  try {
    for (let i = 0; i < 4; i++) vmm.send(message(100 + i, Command.REGION_WRITE, 0, write));
  } catch {
    // The server may already have closed the connection under us.
  }
  vmm.readUntil(-1);
  assert.ok(vmm.closedByServer, "the flooding client is still connected");
  vmm.close();
  const bystander = Client.connect(`${server.socketPath}-b`, quiet);
  worstBystanderRead(bystander, 50);
  bystander.close();
});
