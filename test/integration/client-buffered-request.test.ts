/**
 * Why `npm start` sometimes ended with a Xen-style VM's "recvmsg failed:
 * EAGAIN (reply timed out)": a server request that arrives in the same recv as
 * the reply to the VM's last access sits in the client's buffer, where poll
 * cannot see it. A VM waiting for its interrupt then never answered it, while
 * the daemon (before asynchronous DMA) waited on that answer with its whole
 * loop. Deterministic here: the server sends both in one send.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { closeFd, listenUnix } from "../../src/sys/index.js";
import { Client, PciRegion } from "../../src/vfio-user/index.js";
import { ClientBus } from "../../src/vmm/client-bus.js";

test("a DMA_READ read along with a reply is answered while the VM waits for its interrupt", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-coalesce-"));
  const path = join(dir, "s.sock");
  const listenFd = listenUnix(path);
  const worker = new Worker(new URL("../fixtures/coalescing-server.js", import.meta.url), {
    workerData: { listenFd, waitMs: 3000 },
  });
  const verdict = once(worker, "message");
  try {
    const ram = new Uint8Array(0x10000);
    const client = Client.connect(path, {
      memory: { read: (a, out) => out.set(ram.subarray(Number(a), Number(a) + out.length)), write() {} },
    });
    const bus = new ClientBus(client);
    client.regionWrite(PciRegion.BAR2, 0, new Uint8Array(4)); // its reply brings the DMA_READ along
    bus.waitInterrupt(2000); // no interrupt comes; the DMA_READ must be answered meanwhile
    assert.equal((await verdict)[0], "answered");
    client.close();
  } finally {
    await worker.terminate();
    closeFd(listenFd);
    rmSync(dir, { recursive: true, force: true });
  }
});
