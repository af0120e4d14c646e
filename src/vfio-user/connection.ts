/**
 * Framing for one vfio-user socket: the header, message boundaries on a byte
 * stream, fds matched to the message they came with, and sends from a native
 * buffer. Used by both the server and the client.
 *
 * Receiving is greedy (one recvmsg takes whatever is queued) so a small message
 * costs one syscall. Linux stops a stream read right after the segment that
 * carries fds, so fds that arrive with a read belong to the message holding the
 * last byte of that read; that is how they are matched here.
 */
import { POLLERR, POLLHUP, POLLIN, SocketChannel, SysError, pollOne } from "../sys/index.js";
import { FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_MASK, FLAG_TYPE_REPLY, HEADER_SIZE } from "./constants.js";
import { Errno, ProtocolError } from "./errors.js";
import { PayloadReader, PayloadWriter } from "./messages.js";
import { closeFd } from "../sys/index.js";

/** One received message. Valid until the next `fill` of its connection. */
export class Message {
  id = 0;
  command = 0;
  flags = 0;
  error = 0;
  /** Whole message size from the header, header included. */
  size = 0;
  /** Payload position in `view`. */
  payloadOffset = 0;
  payloadLength = 0;
  /** Fds that arrived with it; whoever keeps one removes it, the rest are closed on release. */
  fds: number[] = [];
  /** The message was larger than this side accepts; its payload was discarded. */
  oversized = false;

  constructor(readonly view: DataView) {}

  get isReply(): boolean {
    return (this.flags & FLAG_TYPE_MASK) === FLAG_TYPE_REPLY;
  }
  get noReply(): boolean {
    return (this.flags & FLAG_NO_REPLY) !== 0;
  }
  get isError(): boolean {
    return (this.flags & FLAG_ERROR) !== 0;
  }
  reader(): PayloadReader {
    return new PayloadReader(this.view, this.payloadOffset, this.payloadLength);
  }
  payload(): Uint8Array {
    return new Uint8Array(this.view.buffer, this.view.byteOffset + this.payloadOffset, this.payloadLength);
  }
}

export interface ConnectionOptions {
  /** Largest message accepted or sent, header included. */
  readonly maxMessageSize: number;
  /** Most fds accepted with one message. */
  readonly maxFds: number;
  /**
   * Sends never block: replies the peer does not take at once wait in a queue
   * of at most this many bytes; past it, send throws (the peer stopped reading).
   * Without it, sends block (the client side).
   */
  readonly queueLimit?: number;
}

const NO_FDS: readonly number[] = [];

export class Connection {
  readonly channel: SocketChannel;
  readonly sendView: DataView;
  private readonly recvView: DataView;
  private readonly capacity: number;
  /** Parse position and fill level in the receive buffer. */
  private start = 0;
  private end = 0;
  /** Stream offset of recvBuffer[0], to place fd batches. */
  private streamBase = 0;
  /** Fds not yet claimed by a parsed message, with the stream offset of the byte they came with. */
  private readonly fdBatches: { at: number; fds: number[] }[] = [];
  /** Bytes still to skip of an oversized message. */
  private discarding = 0;
  /** A message handed out and not yet released pins the buffer against compaction. */
  private pinned = 0;
  /** Reused message objects, one per nesting level (a reply read while a request is in hand). */
  private readonly messages: Message[] = [];
  private nextId = 0;
  closed = false;

  constructor(
    fd: number,
    readonly options: ConnectionOptions,
  ) {
    this.capacity = options.maxMessageSize * 2;
    this.channel = new SocketChannel(fd, {
      capacity: this.capacity,
      maxFds: Math.max(options.maxFds, 16),
      ...(options.queueLimit !== undefined
        ? { queueLimit: Math.max(options.queueLimit, options.maxMessageSize) }
        : {}),
    });
    const rb = this.channel.recvBuffer;
    const sb = this.channel.sendBuffer;
    this.recvView = new DataView(rb.buffer, rb.byteOffset, rb.byteLength);
    this.sendView = new DataView(sb.buffer, sb.byteOffset, options.maxMessageSize);
  }

  get fd(): number {
    return this.channel.fd;
  }

  /** True when the peer has closed its end (what it sent before may still be unread). */
  peerHungUp(): boolean {
    return (pollOne(this.fd, POLLIN, 0) & (POLLHUP | POLLERR)) !== 0;
  }

  /** A fresh message id (u16, wrapping). */
  allocateId(): number {
    this.nextId = (this.nextId + 1) & 0xffff;
    return this.nextId;
  }

  /**
   * Reads more bytes. Returns "data", "empty" (nothing waiting, when !wait) or
   * "eof". Throws ProtocolError when the buffer cannot take more (a pinned
   * message plus a full one behind it).
   */
  fill(wait: boolean): "data" | "empty" | "eof" {
    if (this.pinned === 0 && this.start > 0) this.compact();
    let room = this.capacity - this.end;
    if (room === 0) throw new ProtocolError("receive buffer full");
    if (this.discarding > 0) room = Math.min(room, this.discarding);
    let n: number;
    try {
      n = this.channel.recv(this.end, room, wait);
    } catch (e) {
      if (e instanceof SysError && e.errno === Errno.EAGAIN)
        throw new SysError("recvmsg", e.errno, "reply timed out");
      throw e;
    }
    if (n < 0) return "empty";
    if (n === 0) return "eof";
    const fds = this.channel.receivedFds;
    if (fds.length > 0) this.fdBatches.push({ at: this.streamBase + this.end + n - 1, fds: fds.slice() });
    if (this.discarding > 0) {
      // Bytes of an oversized message (reads are capped so none go past it): drop
      // them, and any fds they carried, without letting them occupy the buffer.
      this.discarding -= n;
      this.dropFdsBefore(this.streamBase + this.end + n);
      this.streamBase += n;
      return "data";
    }
    this.end += n;
    return "data";
  }

  /**
   * The next complete message in the buffer, or null. The returned object is
   * reused: call `release` when done with it.
   */
  next(): Message | null {
    if (this.discarding > 0) return null;
    const avail = this.end - this.start;
    if (avail < HEADER_SIZE) return null;
    const v = this.recvView;
    const at = this.start;
    const size = v.getUint32(at + 4, true);
    if (size < HEADER_SIZE) throw new ProtocolError(`message size ${size} is smaller than the header`);
    const m = this.messages[this.pinned] ?? (this.messages[this.pinned] = new Message(this.recvView));
    if (size > this.options.maxMessageSize) {
      // Too big to hold: keep the header, skip the rest, let the owner reply with an error.
      m.id = v.getUint16(at, true);
      m.command = v.getUint16(at + 2, true);
      m.flags = v.getUint32(at + 8, true);
      m.error = v.getUint32(at + 12, true);
      m.size = size;
      m.payloadOffset = at + HEADER_SIZE;
      m.payloadLength = 0;
      m.oversized = true;
      const inBuffer = Math.min(avail, size);
      this.discarding = size - inBuffer;
      this.consume(inBuffer, m);
      return m;
    }
    if (avail < size) return null;
    m.id = v.getUint16(at, true);
    m.command = v.getUint16(at + 2, true);
    m.size = size;
    m.flags = v.getUint32(at + 8, true);
    m.error = v.getUint32(at + 12, true);
    m.payloadOffset = at + HEADER_SIZE;
    m.payloadLength = size - HEADER_SIZE;
    m.oversized = false;
    this.consume(size, m);
    return m;
  }

  /** Closes the message's unclaimed fds and unpins the buffer. */
  release(m: Message): void {
    for (const fd of m.fds) closeFd(fd);
    m.fds.length = 0;
    if (this.pinned > 0) this.pinned--;
  }

  /** Copies a message out of the buffer (for messages set aside while waiting for a reply). */
  detach(m: Message): Message {
    const bytes = new Uint8Array(m.size);
    bytes.set(
      new Uint8Array(
        m.view.buffer,
        m.view.byteOffset + m.payloadOffset - HEADER_SIZE,
        HEADER_SIZE + m.payloadLength,
      ),
    );
    const copy = new Message(new DataView(bytes.buffer));
    Object.assign(copy, { id: m.id, command: m.command, flags: m.flags, error: m.error, size: m.size });
    copy.payloadOffset = HEADER_SIZE;
    copy.payloadLength = m.payloadLength;
    copy.oversized = m.oversized;
    copy.fds = m.fds.slice();
    m.fds.length = 0;
    this.release(m);
    return copy;
  }

  /** A writer for the payload of the next message to send. */
  payloadWriter(): PayloadWriter {
    return new PayloadWriter(this.sendView, HEADER_SIZE, this.options.maxMessageSize - HEADER_SIZE);
  }

  /** The payload area of the send buffer, for in-place encoding. */
  get sendPayload(): Uint8Array {
    return this.channel.sendBuffer.subarray(HEADER_SIZE, this.options.maxMessageSize);
  }

  /** Sends header + payload[0, payloadLength) already placed in the send buffer. */
  send(
    id: number,
    command: number,
    flags: number,
    error: number,
    payloadLength: number,
    fds: readonly number[] = NO_FDS,
  ): void {
    const v = this.sendView;
    const size = HEADER_SIZE + payloadLength;
    v.setUint16(0, id, true);
    v.setUint16(2, command, true);
    v.setUint32(4, size, true);
    v.setUint32(8, flags, true);
    v.setUint32(12, error, true);
    if (this.options.queueLimit !== undefined) this.channel.sendQueued(size, fds);
    else this.channel.send(size, fds);
  }

  /** Bytes of sent messages still waiting for the peer to take them. */
  get queued(): number {
    return this.channel.queued;
  }

  /** Sends queued bytes as far as the peer takes them; true when none are left. */
  flush(): boolean {
    return this.channel.flush();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const b of this.fdBatches) for (const fd of b.fds) closeFd(fd);
    this.fdBatches.length = 0;
    this.channel.close();
  }

  private consume(size: number, m: Message): void {
    const first = this.streamBase + this.start;
    const last = first + size - 1;
    m.fds.length = 0;
    // Batches that came with bytes of this message belong to it.
    while (this.fdBatches.length > 0 && this.fdBatches[0]!.at <= last) {
      const b = this.fdBatches.shift()!;
      if (b.at >= first) m.fds.push(...b.fds);
      else for (const fd of b.fds) closeFd(fd);
    }
    this.start += size;
    this.pinned++;
  }

  private dropFdsBefore(streamOffset: number): void {
    while (this.fdBatches.length > 0 && this.fdBatches[0]!.at < streamOffset) {
      for (const fd of this.fdBatches.shift()!.fds) closeFd(fd);
    }
  }

  private compact(): void {
    const rest = this.end - this.start;
    if (rest > 0)
      new Uint8Array(this.recvView.buffer, this.recvView.byteOffset, this.capacity).copyWithin(
        0,
        this.start,
        this.end,
      );
    this.streamBase += this.start;
    this.end = rest;
    this.start = 0;
  }
}
