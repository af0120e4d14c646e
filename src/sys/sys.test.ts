import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  DatagramSocket,
  ComposedMapping,
  EventFd,
  Mapping,
  POLLIN,
  Poller,
  SocketChannel,
  SysError,
  acceptUnix,
  closeFd,
  connectUnix,
  SIZE_SEALS,
  createMemfd,
  fdSize,
  isOpenFd,
  listenUnix,
  peerCredentials,
  sendDatagram,
  socketPair,
  tryLockExclusive,
  memfdSeals,
  truncateFd,
} from "./index.js";

function openFdCount(): number {
  return readdirSync("/proc/self/fd").length;
}

test("a channel moves bytes and fds between two sockets", () => {
  const [a, b] = socketPair();
  const left = new SocketChannel(a, { capacity: 4096 });
  const right = new SocketChannel(b, { capacity: 4096 });
  const memfd = createMemfd("test", 4096);
  const ev = new EventFd();
  left.sendBytes(new TextEncoder().encode("hello"), [memfd, ev.fd]);
  const n = right.recv(0, 4096, true);
  assert.equal(n, 5);
  assert.equal(new TextDecoder().decode(right.recvBuffer.subarray(0, 5)), "hello");
  assert.equal(right.receivedFds.length, 2);
  // The received eventfd is the same kernel object: signalling it is seen by the original.
  const received = new EventFd(right.receivedFds[1]);
  received.signal(3);
  assert.equal(ev.read(), 3);
  // The received memfd shares pages with the sender's.
  const m1 = Mapping.ofFd(memfd, 4096);
  const m2 = Mapping.ofFd(right.receivedFds[0]!, 4096);
  m1.bytes[100] = 0xab;
  assert.equal(m2.bytes[100], 0xab);
  m1.unmap();
  m2.unmap();
  closeFd(right.receivedFds[0]!);
  received.close();
  ev.close();
  closeFd(memfd);
  left.close();
  right.close();
});

test("recv without waiting returns -1 when nothing is there, 0 at end of stream", () => {
  const [a, b] = socketPair();
  const right = new SocketChannel(b, { capacity: 64 });
  assert.equal(right.recv(0, 64, false), -1);
  closeFd(a);
  assert.equal(right.recv(0, 64, true), 0);
  right.close();
});

test("large sends are delivered whole across partial writes", () => {
  const [a, b] = socketPair();
  const size = 3 << 20;
  const left = new SocketChannel(a, { capacity: size });
  const right = new SocketChannel(b, { capacity: size });
  for (let i = 0; i < size; i++) left.sendBuffer[i] = (i * 7) & 0xff;
  // The reader must run concurrently with a blocking writer: use a non-blocking drain.
  let got = 0;
  const poller = new Poller(1);
  poller.setAll([b], POLLIN);
  const chunk = 1 << 16;
  let sent = 0;
  while (sent < size) {
    const len = Math.min(chunk, size - sent);
    left.sendBuffer.copyWithin(0, sent, sent + len);
    left.send(len);
    sent += len;
    while (poller.wait(0) > 0) {
      const n = right.recv(got, size - got, false);
      if (n <= 0) break;
      got += n;
    }
  }
  while (got < size) got += right.recv(got, size - got, true);
  assert.equal(got, size);
  poller.close();
  left.close();
  right.close();
});

test("errors carry the errno name", () => {
  assert.throws(
    () => connectUnix(join(tmpdir(), `mgpu-nonexistent-${process.pid}.sock`)),
    (e: unknown) => e instanceof SysError && e.code === "ENOENT" && e.syscall === "connect",
  );
  assert.throws(
    () => closeFd(987654),
    (e: unknown) => e instanceof SysError && e.code === "EBADF",
  );
});

test("no fd leaks across 1,000 connect/accept/close cycles", () => {
  const path = join(tmpdir(), `mgpu-leak-${process.pid}.sock`);
  rmSync(path, { force: true });
  const listener = listenUnix(path);
  const before = openFdCount();
  for (let i = 0; i < 1000; i++) {
    const client = new SocketChannel(connectUnix(path), { capacity: 256 });
    const accepted = acceptUnix(listener);
    assert.ok(accepted !== null);
    const server = new SocketChannel(accepted, { capacity: 256 });
    const ev = new EventFd();
    client.sendBytes(new Uint8Array([i & 0xff]), [ev.fd]);
    assert.equal(server.recv(0, 256, true), 1);
    for (const fd of server.receivedFds) closeFd(fd);
    ev.close();
    server.close();
    client.close();
  }
  assert.equal(openFdCount(), before);
  closeFd(listener);
  rmSync(path, { force: true });
});

test("a revoked mapping reads zeros instead of faulting", () => {
  const fd = createMemfd("revoke", 8192);
  const m = Mapping.ofFd(fd, 8192);
  const view = new Uint32Array(m.buffer);
  view[0] = 0xdeadbeef;
  m.revoke();
  assert.equal(m.revoked, true);
  assert.equal(view[0], 0);
  view[0] = 1; // writes go to private memory, not the file
  const again = Mapping.ofFd(fd, 8192);
  assert.equal(new Uint32Array(again.buffer)[0], 0xdeadbeef);
  again.unmap();
  m.unmap();
  closeFd(fd);
  assert.equal(isOpenFd(fd), false);
});

test("a size-sealed memfd refuses ftruncate either way; a composed range swaps files in place", () => {
  const fd = createMemfd("sealed", 8192, { sealSize: true });
  assert.equal(memfdSeals(fd) & SIZE_SEALS, SIZE_SEALS);
  assert.throws(
    () => truncateFd(fd, 0),
    (e: unknown) => e instanceof SysError && e.code === "EPERM",
  );
  assert.throws(
    () => truncateFd(fd, 1 << 20),
    (e: unknown) => e instanceof SysError && e.code === "EPERM",
  );
  assert.equal(fdSize(fd), 8192);

  const range = ComposedMapping.reserve(4 * 4096);
  const words = new Uint32Array(range.buffer);
  range.mapPrivate(0, 4 * 4096);
  words[0] = 1;
  range.mapFile(4096, 8192, fd);
  words[1024] = 0xc0ffee;
  const file = Mapping.ofFd(fd, 8192);
  assert.equal(new Uint32Array(file.buffer)[0], 0xc0ffee, "the piece is the file");
  assert.equal(words[0], 1, "the private page beside it is untouched");
  range.mapPrivate(4096, 8192);
  assert.equal(words[1024], 0, "replaced by zeroed private memory");
  assert.equal(new Uint32Array(file.buffer)[0], 0xc0ffee, "the file keeps its contents");
  assert.throws(() => range.mapFile(3 * 4096, 8192, fd), SysError, "a piece past the end is refused");
  file.unmap();
  range.unmap();
  closeFd(fd);
});

test("a non-blocking eventfd reads 0 when unsignalled and the poller sees it once signalled", () => {
  const ev = new EventFd(undefined, { nonBlocking: true });
  assert.equal(ev.read(), 0);
  const poller = new Poller();
  poller.setAll([ev.fd], POLLIN);
  assert.equal(poller.wait(0), 0);
  ev.signal(2);
  assert.equal(poller.wait(0), 1);
  assert.equal(poller.revents(0) & POLLIN, POLLIN);
  assert.equal(ev.read(), 2);
  poller.close();
  ev.close();
});

test("waitAsync resolves on the event loop when an fd becomes ready", async () => {
  const ev = new EventFd(undefined, { nonBlocking: true });
  const poller = new Poller();
  poller.setAll([ev.fd], POLLIN);
  const ready = poller.waitAsync(5000);
  setTimeout(() => ev.signal(), 10);
  assert.equal(await ready, 1);
  poller.close();
  ev.close();
});

test("peerCredentials names the connecting process (SO_PEERCRED)", () => {
  const path = join(tmpdir(), `mgpu-sys-cred-${process.pid}.sock`);
  rmSync(path, { force: true });
  const listener = listenUnix(path);
  const client = connectUnix(path);
  const server = acceptUnix(listener)!;
  try {
    const cred = peerCredentials(server);
    assert.equal(cred.pid, process.pid);
    assert.equal(cred.uid, process.getuid!());
    assert.equal(cred.gid, process.getgid!());
  } finally {
    for (const fd of [server, client, listener]) closeFd(fd);
    rmSync(path, { force: true });
  }
});

test("tryLockExclusive: a second open file is refused while the first holds the lock", () => {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-sys-lock-"));
  const file = join(dir, "lock");
  const a = openSync(file, "w");
  const b = openSync(file, "r");
  try {
    assert.equal(tryLockExclusive(a), true);
    assert.equal(tryLockExclusive(b), false);
    closeSync(a);
    assert.equal(tryLockExclusive(b), true, "closing the holder releases the lock");
  } finally {
    closeSync(b);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("sendDatagram reaches a DatagramSocket by path and in the abstract namespace", () => {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-sys-dgram-"));
  try {
    for (const address of [join(dir, "notify.sock"), `@mgpu-sys-${process.pid}`]) {
      const receiver = DatagramSocket.bind(address);
      try {
        assert.equal(receiver.receive(), null, "nothing queued yet");
        sendDatagram(address, Buffer.from("READY=1"));
        assert.equal(receiver.receive()?.toString(), "READY=1", address);
      } finally {
        receiver.close();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
