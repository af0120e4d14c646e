/**
 * AF_UNIX stream sockets, and a channel that moves bytes and file descriptors
 * (SCM_RIGHTS) through buffers that live in native memory, so sending and
 * receiving a message allocates nothing.
 */
import { EAGAIN, EINTR, EINVAL, EMSGSIZE, ENAMETOOLONG, ENOBUFS } from "./errno-values.js";
import { closeFd } from "./fd.js";
import {
  AF_UNIX,
  MSG_CMSG_CLOEXEC,
  MSG_CTRUNC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  POLLOUT,
  SCM_RIGHTS,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_DGRAM,
  SOCK_STREAM,
  SOL_SOCKET,
  SO_PEERCRED,
  SO_RCVTIMEO,
  SO_SNDTIMEO,
  type NativePointer,
  allocNative,
  check,
  errno,
  freeNative,
  libc,
} from "./libc.js";
import { pollOne } from "./poll.js";
import { SysError } from "./errors.js";

const SUN_PATH_MAX = 108;

function sockaddrUn(path: string): Uint8Array {
  const encoded = Buffer.from(path, "utf8");
  if (encoded.length >= SUN_PATH_MAX) throw new SysError("sockaddr_un", ENAMETOOLONG, path);
  const addr = new Uint8Array(2 + SUN_PATH_MAX);
  addr[0] = AF_UNIX; // sa_family, little-endian u16
  addr.set(encoded, 2);
  return addr;
}

function retryOnEintr(syscall: string, call: () => number): number {
  for (;;) {
    const r = call();
    if (r >= 0) return r;
    const e = errno();
    if (e !== EINTR) throw new SysError(syscall, e);
  }
}

/**
 * A sockaddr_un of exactly the used length; a leading "@" names the abstract
 * namespace (a NUL first byte, no terminator), as systemd's NOTIFY_SOCKET may.
 */
function sockaddrUnExact(path: string): Uint8Array {
  const abstract = path.startsWith("@");
  const encoded = Buffer.from(abstract ? path.slice(1) : path, "utf8");
  if (encoded.length + 1 >= SUN_PATH_MAX) throw new SysError("sockaddr_un", ENAMETOOLONG, path);
  const addr = new Uint8Array(2 + (abstract ? 1 : 0) + encoded.length + (abstract ? 0 : 1));
  addr[0] = AF_UNIX;
  addr.set(encoded, abstract ? 3 : 2);
  return addr;
}

/** Sends one datagram to an AF_UNIX datagram socket (e.g. sd_notify's NOTIFY_SOCKET). */
export function sendDatagram(path: string, data: Uint8Array): void {
  const addr = sockaddrUnExact(path);
  const fd = check("socket", libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  try {
    retryOnEintr("sendto", () => libc.sendto(fd, data, data.length, MSG_NOSIGNAL, addr, addr.length));
  } finally {
    closeFd(fd);
  }
}

/** A bound AF_UNIX datagram socket that receives without blocking (the listening side of sd_notify). */
export class DatagramSocket {
  private constructor(readonly fd: number) {}

  static bind(path: string): DatagramSocket {
    const addr = sockaddrUnExact(path);
    const fd = check("socket", libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    try {
      check("bind", libc.bind(fd, addr, addr.length));
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    return new DatagramSocket(fd);
  }

  /** The next datagram, or null if none is queued. */
  receive(maxBytes = 4096): Buffer | null {
    const buf = new Uint8Array(maxBytes);
    for (;;) {
      const n = libc.read(this.fd, buf, buf.length);
      if (n >= 0) return Buffer.from(buf.subarray(0, n));
      const e = errno();
      if (e === EAGAIN) return null;
      if (e !== EINTR) throw new SysError("read", e);
    }
  }

  close(): void {
    closeFd(this.fd);
  }
}

/** Who is at the other end of a connected AF_UNIX socket (SO_PEERCRED, as of connect). */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

export function peerCredentials(fd: number): PeerCredentials {
  const cred = new Uint8Array(12); // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
  const len = new Uint32Array([cred.length]);
  check("getsockopt(SO_PEERCRED)", libc.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, len));
  const v = new DataView(cred.buffer);
  return { pid: v.getInt32(0, true), uid: v.getUint32(4, true), gid: v.getUint32(8, true) };
}

/** A listening AF_UNIX stream socket (non-blocking, so accept never stalls a loop). */
export function listenUnix(path: string, backlog = 64): number {
  const addr = sockaddrUn(path);
  const fd = check("socket", libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  try {
    check("bind", libc.bind(fd, addr, addr.length));
    check("listen", libc.listen(fd, backlog));
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/** Accepts one pending connection (a blocking socket), or returns null if none is waiting. */
export function acceptUnix(listenFd: number): number | null {
  for (;;) {
    const fd = libc.accept4(listenFd, null, null, SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    const e = errno();
    if (e === EAGAIN) return null;
    if (e !== EINTR) throw new SysError("accept4", e);
  }
}

/** Connects a blocking stream socket to a path. */
export function connectUnix(path: string): number {
  const addr = sockaddrUn(path);
  const fd = check("socket", libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  try {
    retryOnEintr("connect", () => libc.connect(fd, addr, addr.length));
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/** A connected pair of blocking stream sockets. */
export function socketPair(): [number, number] {
  const sv = new Int32Array(2);
  check("socketpair", libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  return [sv[0]!, sv[1]!];
}

function setTimeoutOption(fd: number, option: number, ms: number): void {
  const tv = new DataView(new ArrayBuffer(16));
  tv.setBigInt64(0, BigInt(Math.floor(ms / 1000)), true);
  tv.setBigInt64(8, BigInt((ms % 1000) * 1000), true);
  check("setsockopt", libc.setsockopt(fd, SOL_SOCKET, option, new Uint8Array(tv.buffer), 16));
}

/** Bounds how long a blocking send may wait for a peer that stopped reading. */
export function setSendTimeout(fd: number, ms: number): void {
  setTimeoutOption(fd, SO_SNDTIMEO, ms);
}

/** Bounds how long a blocking receive waits; it then fails with EAGAIN. */
export function setReceiveTimeout(fd: number, ms: number): void {
  setTimeoutOption(fd, SO_RCVTIMEO, ms);
}

export function shutdownSocket(fd: number): void {
  libc.shutdown(fd, 2);
}

// struct msghdr (x86_64/aarch64 LP64): name, namelen, iov, iovlen, control, controllen, flags.
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSG_HEADER = 16;

/** One native block holding a msghdr, its iovec and room for SCM_RIGHTS control data. */
class NativeMsg {
  readonly pointer: NativePointer;
  private readonly view: DataView;
  private readonly iovAddress: bigint;
  private readonly controlAddress: bigint;
  private readonly controlOffset: number;
  readonly controlCapacity: number;

  constructor(maxFds: number) {
    this.controlCapacity = CMSG_HEADER + align8(maxFds * 4);
    this.controlOffset = MSGHDR_SIZE + IOVEC_SIZE;
    const total = this.controlOffset + this.controlCapacity;
    const native = allocNative(total);
    this.pointer = native.pointer;
    this.view = new DataView(native.bytes.buffer, native.bytes.byteOffset, total);
    this.iovAddress = native.address + BigInt(MSGHDR_SIZE);
    this.controlAddress = native.address + BigInt(this.controlOffset);
    this.view.setBigUint64(16, this.iovAddress, true); // msg_iov
    this.view.setBigUint64(24, 1n, true); // msg_iovlen
  }

  setBuffer(address: bigint, length: number): void {
    this.view.setBigUint64(MSGHDR_SIZE, address, true);
    this.view.setBigUint64(MSGHDR_SIZE + 8, BigInt(length), true);
  }

  /** Attaches fds as one SCM_RIGHTS message (or none). */
  setFds(fds: readonly number[] | undefined): void {
    if (!fds || fds.length === 0) {
      this.view.setBigUint64(32, 0n, true);
      this.view.setBigUint64(40, 0n, true);
      return;
    }
    const len = CMSG_HEADER + fds.length * 4;
    if (len > this.controlCapacity) throw new SysError("sendmsg", EMSGSIZE, `${fds.length} fds`);
    const c = this.controlOffset;
    this.view.setBigUint64(c, BigInt(len), true); // cmsg_len
    this.view.setInt32(c + 8, SOL_SOCKET, true);
    this.view.setInt32(c + 12, SCM_RIGHTS, true);
    for (let i = 0; i < fds.length; i++) this.view.setInt32(c + CMSG_HEADER + i * 4, fds[i]!, true);
    this.view.setBigUint64(32, this.controlAddress, true);
    this.view.setBigUint64(40, BigInt(CMSG_HEADER + align8(fds.length * 4)), true);
  }

  /** Offers the whole control area for receiving. */
  armControl(): void {
    this.view.setBigUint64(32, this.controlAddress, true);
    this.view.setBigUint64(40, BigInt(this.controlCapacity), true);
    this.view.setInt32(48, 0, true);
  }

  flags(): number {
    return this.view.getInt32(48, true);
  }

  /** Appends every fd carried by SCM_RIGHTS control messages to `out`. */
  collectFds(out: number[]): void {
    const controlLen = Number(this.view.getBigUint64(40, true));
    let offset = 0;
    while (offset + CMSG_HEADER <= controlLen) {
      const c = this.controlOffset + offset;
      const len = Number(this.view.getBigUint64(c, true));
      if (len < CMSG_HEADER) break;
      if (this.view.getInt32(c + 8, true) === SOL_SOCKET && this.view.getInt32(c + 12, true) === SCM_RIGHTS) {
        const n = (len - CMSG_HEADER) >> 2;
        for (let i = 0; i < n; i++) out.push(this.view.getInt32(c + CMSG_HEADER + i * 4, true));
      }
      offset += CMSG_HEADER + align8(len - CMSG_HEADER);
    }
  }

  free(): void {
    freeNative(this.pointer);
  }
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

export interface ChannelOptions {
  /** Size of each of the send and receive buffers, in bytes. */
  readonly capacity: number;
  /** Most fds one message may carry in either direction. */
  readonly maxFds?: number;
  /**
   * Never block on send: what the peer does not take at once waits in an
   * output queue of at most this many bytes (see `sendQueued`).
   */
  readonly queueLimit?: number;
}

/** Fds that must ride on the first byte at stream position `at` of the output queue (dups, ours to close). */
interface QueuedFds {
  at: number;
  readonly fds: number[];
}

/**
 * The bytes a non-blocking channel could not send yet, in native memory (the
 * pages are only committed when a peer falls behind), with the fds that go
 * with them. Stream positions count bytes ever queued, so fd batches keep
 * their place across compaction.
 */
class OutputQueue {
  private native: { pointer: NativePointer; address: bigint; bytes: Uint8Array } | undefined;
  private head = 0;
  private tail = 0;
  /** Stream position of bytes[0]. */
  private base = 0;
  readonly fds: QueuedFds[] = [];

  constructor(readonly limit: number) {}

  get length(): number {
    return this.tail - this.head;
  }

  /** Appends bytes (and dups of fds for their first byte); false if that would pass the limit. */
  push(from: Uint8Array, fds: readonly number[] | undefined): boolean {
    if (this.length + from.length > this.limit) return false;
    const q = this.storage();
    if (this.tail + from.length > this.limit) {
      q.bytes.copyWithin(0, this.head, this.tail);
      this.base += this.head;
      this.tail -= this.head;
      this.head = 0;
    }
    if (fds && fds.length > 0) this.fds.push({ at: this.base + this.tail, fds: fds.map(dupCloexec) });
    q.bytes.set(from, this.tail);
    this.tail += from.length;
    return true;
  }

  /** Where the next send starts, how much it may take (up to the next fd batch), and the fds riding on it. */
  next(): { address: bigint; length: number; fds: number[] | undefined } {
    const q = this.storage();
    const at = this.base + this.head;
    let length = this.length;
    let fds: number[] | undefined;
    const first = this.fds[0];
    if (first && first.at === at) {
      fds = first.fds;
      const second = this.fds[1];
      if (second) length = Math.min(length, second.at - at);
    } else if (first) length = Math.min(length, first.at - at);
    return { address: q.address + BigInt(this.head), length, fds };
  }

  consume(n: number, fdsSent: boolean): void {
    if (fdsSent) for (const fd of this.fds.shift()!.fds) closeFd(fd);
    this.head += n;
    if (this.head === this.tail) {
      this.base += this.head;
      this.head = this.tail = 0;
    }
  }

  free(): void {
    for (const b of this.fds.splice(0)) for (const fd of b.fds) closeFd(fd);
    if (this.native) freeNative(this.native.pointer);
    this.native = undefined;
  }

  private storage(): { pointer: NativePointer; address: bigint; bytes: Uint8Array } {
    return (this.native ??= allocNative(this.limit, false));
  }
}

function dupCloexec(fd: number): number {
  return check("fcntl(F_DUPFD_CLOEXEC)", libc.fcntl(fd, 1030 /* F_DUPFD_CLOEXEC */, 0));
}

/**
 * A stream socket with a native send buffer and a native receive buffer.
 * Callers encode straight into `sendBuffer` and decode straight out of
 * `recvBuffer`; fds that arrive are collected in `receivedFds`.
 */
export class SocketChannel {
  readonly sendBuffer: Uint8Array;
  readonly recvBuffer: Uint8Array;
  /** Fds delivered by the most recent `recv` call (the array is reused). */
  readonly receivedFds: number[] = [];
  private readonly sendNative: { pointer: NativePointer; address: bigint };
  private readonly recvNative: { pointer: NativePointer; address: bigint };
  private readonly sendMsg: NativeMsg;
  private readonly recvMsg: NativeMsg;
  private readonly queue: OutputQueue | undefined;
  private open = true;

  constructor(
    readonly fd: number,
    options: ChannelOptions,
  ) {
    const maxFds = options.maxFds ?? 16;
    if (options.queueLimit !== undefined) this.queue = new OutputQueue(options.queueLimit);
    const send = allocNative(options.capacity, false);
    const recv = allocNative(options.capacity, false);
    this.sendNative = send;
    this.recvNative = recv;
    this.sendBuffer = send.bytes;
    this.recvBuffer = recv.bytes;
    this.sendMsg = new NativeMsg(maxFds);
    this.recvMsg = new NativeMsg(maxFds);
  }

  get isOpen(): boolean {
    return this.open;
  }

  /**
   * Sends sendBuffer[0, length) completely, the fds riding on the first chunk.
   * Blocks while the peer's receive queue is full (bounded by SO_SNDTIMEO if set).
   */
  send(length: number, fds?: readonly number[]): void {
    let sent = 0;
    this.sendMsg.setFds(fds);
    while (sent < length) {
      this.sendMsg.setBuffer(this.sendNative.address + BigInt(sent), length - sent);
      const n = libc.sendmsg(this.fd, this.sendMsg.pointer, MSG_NOSIGNAL);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e === EAGAIN) {
          // Non-blocking socket or send timeout: wait once more for room, then give up.
          if (pollOne(this.fd, POLLOUT, 5000) === 0) throw new SysError("sendmsg", e, "peer not reading");
          continue;
        }
        throw new SysError("sendmsg", e);
      }
      if (sent === 0 && fds && fds.length > 0) this.sendMsg.setFds(undefined);
      sent += n;
    }
  }

  /** Bytes waiting in the output queue (0 for a blocking channel). */
  get queued(): number {
    return this.queue?.length ?? 0;
  }

  /**
   * Sends sendBuffer[0, length) without ever blocking: what the peer does not
   * take now is queued (with dups of the fds, if none of it went out) and goes
   * out with `flush` when the socket is writable. Throws SysError(ENOBUFS) if
   * the queue would pass its limit: the peer has stopped reading.
   */
  sendQueued(length: number, fds?: readonly number[]): void {
    const queue = this.queue;
    if (!queue) throw new SysError("sendmsg", EINVAL, "channel has no output queue");
    let sent = 0;
    if (queue.length === 0) {
      this.sendMsg.setFds(fds);
      sent = this.sendOnce(this.sendNative.address, length);
      if (sent < 0) sent = 0;
    }
    if (sent === length) return;
    const rest = this.sendBuffer.subarray(sent, length);
    if (!queue.push(rest, sent === 0 ? fds : undefined))
      throw new SysError(
        "sendmsg",
        ENOBUFS,
        `peer not reading: ${queue.length + rest.length} bytes would be queued`,
      );
  }

  /** Sends what the output queue holds, as far as the peer takes it; true when nothing is left. */
  flush(): boolean {
    const queue = this.queue;
    if (!queue) return true;
    while (queue.length > 0) {
      const { address, length, fds } = queue.next();
      this.sendMsg.setFds(fds);
      const n = this.sendOnce(address, length);
      if (n < 0) return false;
      queue.consume(n, fds !== undefined);
    }
    return true;
  }

  /** One non-blocking sendmsg; -1 when the socket is full. */
  private sendOnce(address: bigint, length: number): number {
    this.sendMsg.setBuffer(address, length);
    for (;;) {
      const n = libc.sendmsg(this.fd, this.sendMsg.pointer, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return n;
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return -1;
      throw new SysError("sendmsg", e);
    }
  }

  /** Copies bytes into the send buffer and sends them. */
  sendBytes(bytes: Uint8Array, fds?: readonly number[]): void {
    if (bytes.length > this.sendBuffer.length) throw new SysError("sendmsg", EMSGSIZE);
    this.sendBuffer.set(bytes);
    this.send(bytes.length, fds);
  }

  /**
   * Receives up to `length` bytes into recvBuffer at `offset`. Returns the byte
   * count, 0 at end of stream, or -1 if `wait` is false and nothing is there.
   * Fds that came with the bytes are in `receivedFds`; if the kernel had to drop
   * fds for lack of room, the ones that did arrive are closed and EMSGSIZE thrown.
   */
  recv(offset: number, length: number, wait: boolean): number {
    this.receivedFds.length = 0;
    this.recvMsg.setBuffer(this.recvNative.address + BigInt(offset), length);
    for (;;) {
      this.recvMsg.armControl();
      const n = libc.recvmsg(this.fd, this.recvMsg.pointer, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT));
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e === EAGAIN && !wait) return -1;
        throw new SysError("recvmsg", e);
      }
      this.recvMsg.collectFds(this.receivedFds);
      if (this.recvMsg.flags() & MSG_CTRUNC) {
        for (const fd of this.receivedFds) closeFd(fd);
        this.receivedFds.length = 0;
        throw new SysError("recvmsg", EMSGSIZE, "too many fds in one message");
      }
      return n;
    }
  }

  /** Closes the socket and releases the native buffers. */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.queue?.free();
    closeFd(this.fd);
    freeNative(this.sendNative.pointer);
    freeNative(this.recvNative.pointer);
    this.sendMsg.free();
    this.recvMsg.free();
  }
}
