/**
 * Replies compared with libvfio-user's on the same malformed or unusual
 * messages (issue 12's conformance list), over a real socket, served by the PCI
 * toolkit's sample device (the DMA and migration code every vGPU uses).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { closeFd, createMemfd } from "../../src/sys/index.js";
import { Command, Errno, FLAG_ERROR, FLAG_TYPE_REPLY } from "../../src/vfio-user/index.js";
import { RawPeer, le, versionPayload } from "../support/raw-peer.js";
import { type ServerProcess, startSampleServer } from "../support/server-process.js";

let server: ServerProcess;
before(async () => {
  server = await startSampleServer();
});
after(async () => {
  await server.stop();
});

function withPeer(fn: (peer: RawPeer) => void): void {
  const peer = new RawPeer(server.socketPath);
  try {
    fn(peer);
  } finally {
    peer.close();
  }
}

const dmaMap = (address: number, size: number, offset = 0, flags = 3) =>
  le([32, 32], [32, flags], [64, offset], [64, address], [64, size]);

test("VERSION with a migration pgsize that is not a power of two of at least 4096 gets EINVAL", () => {
  for (const pgsize of [4095, 2048, 12288, 0]) {
    withPeer((peer) => {
      const r = peer.request(
        1,
        Command.VERSION,
        versionPayload({ migration: { pgsize, max_bitmap_size: 4096 } }),
      );
      assert.ok(r.flags & FLAG_ERROR, `pgsize ${pgsize} accepted`);
      assert.equal(r.error, Errno.EINVAL);
    });
  }
  withPeer((peer) => peer.handshake({ migration: { pgsize: 8192, max_bitmap_size: 4096 } }));
});

test("a request with the reply flag set gets an EINVAL reply, and the session goes on", () => {
  withPeer((peer) => {
    peer.handshake();
    const r = peer.request(7, Command.DEVICE_GET_INFO, le([32, 16], [32, 0], [32, 0], [32, 0]), {
      flags: FLAG_TYPE_REPLY,
    });
    assert.ok(r.flags & FLAG_ERROR);
    assert.equal(r.error, Errno.EINVAL);
    const ok = peer.request(8, Command.DEVICE_GET_INFO, le([32, 16], [32, 0], [32, 0], [32, 0]));
    assert.equal(ok.flags & FLAG_ERROR, 0);
  });
});

test("an identical DMA_MAP of a mapped range is accepted; a real overlap or another file is refused", () => {
  const memfd = createMemfd("guest", 0x4000);
  const other = createMemfd("other", 0x4000);
  try {
    withPeer((peer) => {
      peer.handshake();
      assert.equal(
        peer.request(2, Command.DMA_MAP, dmaMap(0x100000, 0x2000), { fds: [memfd] }).flags & FLAG_ERROR,
        0,
      );
      const fds = server.fdCount();
      const again = peer.request(3, Command.DMA_MAP, dmaMap(0x100000, 0x2000), { fds: [memfd] });
      assert.equal(again.flags & FLAG_ERROR, 0, `identical DMA_MAP refused: errno ${again.error}`);
      assert.equal(server.fdCount(), fds, "the second fd for the same mapping was not kept");
      const overlap = peer.request(4, Command.DMA_MAP, dmaMap(0x101000, 0x2000), { fds: [memfd] });
      assert.equal(overlap.error, Errno.EEXIST);
      const otherFile = peer.request(5, Command.DMA_MAP, dmaMap(0x100000, 0x2000), { fds: [other] });
      assert.equal(otherFile.error, Errno.EINVAL);
      const otherOffset = peer.request(6, Command.DMA_MAP, dmaMap(0x100000, 0x2000, 0x1000), {
        fds: [memfd],
      });
      assert.equal(otherOffset.error, Errno.EINVAL);
      const readOnly = peer.request(7, Command.DMA_MAP, dmaMap(0x100000, 0x2000, 0, 1), { fds: [memfd] });
      assert.equal(readOnly.error, Errno.EINVAL);
    });
  } finally {
    closeFd(memfd);
    closeFd(other);
  }
});

test("DMA_UNMAP with an argsz beyond the largest transfer is refused with EINVAL", () => {
  withPeer((peer) => {
    peer.handshake();
    const big = peer.request(
      2,
      Command.DMA_UNMAP,
      le([32, (1 << 20) + 8], [32, 0], [64, 0x100000], [64, 0x1000]),
    );
    assert.ok(big.flags & FLAG_ERROR);
    assert.equal(big.error, Errno.EINVAL);
    const ok = peer.request(3, Command.DMA_UNMAP, le([32, 24], [32, 0], [64, 0x100000], [64, 0x1000]));
    assert.equal(ok.flags & FLAG_ERROR, 0);
  });
});
