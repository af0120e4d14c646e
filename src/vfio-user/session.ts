/**
 * One client connection and what was negotiated on it, and the requests the
 * server itself sends that client (DMA_READ/DMA_WRITE for memory it mapped
 * without an fd), with the wait for their replies.
 */
import { RateLimitedLog } from "../base/index.js";
import { POLLERR, POLLHUP, POLLIN, POLLOUT, SysError, pollOne } from "../sys/index.js";
import type { Capabilities } from "./capabilities.js";
import { defaultCapabilities } from "./capabilities.js";
import { Connection, type Message } from "./connection.js";
import { Command, FLAG_TYPE_COMMAND, HEADER_SIZE, commandName } from "./constants.js";
import type { DeviceSession, DmaDone, DmaPiece, VfioDevice } from "./device.js";
import type { Endpoint } from "./endpoint.js";
import { Errno, ProtocolError, VfioUserError } from "./errors.js";
import { RegionAccess, decodeDmaReadReply, encodeDmaAccess } from "./messages.js";

/** What a server grants every session (fixed for the server's life). */
export interface SessionLimits {
  readonly maxDataXferSize: number;
  readonly maxMsgFds: number;
  readonly maxMessageSize: number;
  readonly writeMultiple: boolean;
  readonly twinSocket: boolean;
  /** How long to wait for a client's reply to our DMA request, or for it to take ours. */
  readonly timeoutMs: number;
  /** Most reply bytes queued for a client that does not read; past it the client is disconnected. */
  readonly queueLimit: number;
  /** Most DMA mappings one client may hold (advertised as max_dma_maps). */
  readonly maxDmaMappings: number;
  /** Most fds (DMA windows, eventfds) the device may hold for one client. */
  readonly maxClientFds: number;
}

/** One asynchronous DMA batch: how many replies it waits for, and who to tell. */
class DmaBatch {
  finished = false;
  constructor(
    public remaining: number,
    private readonly done: DmaDone,
    private readonly log: RateLimitedLog,
  ) {}
  complete(error?: VfioUserError): void {
    if (this.finished) return;
    if (error === undefined && --this.remaining > 0) return;
    this.finished = true;
    try {
      this.done(error);
    } catch (e) {
      // The device's completion failed: its problem, not the client's.
      this.log.warn({ err: e instanceof Error ? e.message : String(e) }, "DMA completion failed");
    }
  }
}

/** A request of ours on the wire, waiting for its reply. */
interface PendingDma {
  readonly command: number;
  readonly target: Connection;
  /** DMA_READ: where the data goes. */
  readonly into: Uint8Array | undefined;
  readonly count: number;
  readonly deadline: number;
  readonly batch: DmaBatch;
}

export class Session implements DeviceSession {
  negotiated = false;
  peer: Capabilities = defaultCapabilities;
  twin: Connection | undefined;
  /** Messages that arrived while we waited for a reply to our own request. */
  readonly deferred: Message[] = [];
  /** Bytes held in `deferred` (reset when they are handled). */
  deferredBytes = 0;
  /** Set when the client broke the protocol inside a device call: the loop closes the session. */
  failure: string | undefined;
  /** Fds to send with the reply being built. */
  readonly replyFds: number[] = [];
  /** Fds to close once the reply is sent (the client's end of a twin socket). */
  readonly closeAfterReply: number[] = [];
  /** The device was told about this client (attach); it must be told when it goes. */
  attached = false;
  /** Set by VERSION: the device's VMM, or a read-only observer (another client held it). */
  role: "owner" | "observer" | undefined;
  /** When the connection was accepted (performance.now()), for the negotiation timeout. */
  readonly acceptedAt = performance.now();
  /** The loop polls this session for POLLOUT (it has queued output). */
  writeWanted = false;
  /** The same for the twin socket. */
  twinWriteWanted = false;
  /** The twin socket is in the loop's poll set. */
  twinPolled = false;
  /** Scratch for REGION_READ/WRITE decoding (the trap path allocates nothing). */
  readonly access = new RegionAccess();

  constructor(
    readonly endpoint: Endpoint,
    readonly conn: Connection,
    readonly log: RateLimitedLog,
    readonly limits: SessionLimits,
  ) {}

  get device(): VfioDevice {
    return this.endpoint.device;
  }

  get maxDmaMappings(): number {
    return this.limits.maxDmaMappings;
  }

  dmaRead(address: bigint, out: Uint8Array): void {
    this.dmaTransfer(Command.DMA_READ, address, out);
  }

  dmaWrite(address: bigint, data: Uint8Array): void {
    this.dmaTransfer(Command.DMA_WRITE, address, data);
  }

  /** Asynchronous DMA requests on the wire, by message id. */
  readonly pending = new Map<number, PendingDma>();

  dmaReadAsync(pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void {
    this.dmaStart(Command.DMA_READ, pieces, done, timeoutMs);
  }

  dmaWriteAsync(pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void {
    this.dmaStart(Command.DMA_WRITE, pieces, done, timeoutMs);
  }

  /** Sends every request of a batch now (never blocking: the output queue takes what the socket does not). */
  private dmaStart(command: number, pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void {
    const target = this.twin ?? this.conn;
    const chunkMax = Math.min(this.peer.maxDataXferSize, target.options.maxMessageSize - HEADER_SIZE - 32);
    const isWrite = command === Command.DMA_WRITE;
    let messages = 0;
    for (const p of pieces) messages += Math.ceil(p.bytes.length / chunkMax);
    const batch = new DmaBatch(messages, done, this.log);
    if (messages === 0) return batch.complete();
    if (this.pending.size + messages > 0xff00)
      return batch.complete(new VfioUserError(Errno.EAGAIN, "too many DMA requests outstanding"));
    const deadline = performance.now() + Math.max(0, Math.min(this.limits.timeoutMs, timeoutMs ?? Infinity));
    for (const p of pieces)
      for (let done = 0; done < p.bytes.length;) {
        const count = Math.min(chunkMax, p.bytes.length - done);
        const part = p.bytes.subarray(done, done + count);
        const w = target.payloadWriter();
        encodeDmaAccess(w, p.address + BigInt(done), count, isWrite ? part : undefined);
        let id = target.allocateId();
        while (this.pending.has(id)) id = target.allocateId();
        target.send(id, command, FLAG_TYPE_COMMAND, 0, w.length);
        this.pending.set(id, { command, target, into: isWrite ? undefined : part, count, deadline, batch });
        done += count;
      }
  }

  /** A reply to one of our asynchronous requests: completes it and returns true; false if it is none of ours. */
  completeReply(m: Message): boolean {
    const p = this.pending.get(m.id);
    if (!p || p.command !== m.command) return false;
    this.pending.delete(m.id);
    if (p.batch.finished) return true; // its batch already failed
    if (m.isError)
      p.batch.complete(new VfioUserError(m.error || Errno.EIO, `client refused ${commandName(m.command)}`));
    else
      try {
        if (p.into) p.into.set(decodeDmaReadReply(m.reader(), p.count));
        p.batch.complete();
      } catch (e) {
        p.batch.complete(e instanceof VfioUserError ? e : new VfioUserError(Errno.EIO, String(e)));
      }
    return true;
  }

  /** Fails requests whose reply is overdue; returns the earliest deadline left (Infinity if none). */
  expirePending(now: number): number {
    let next = Infinity;
    for (const [id, p] of this.pending) {
      if (p.deadline > now) {
        next = Math.min(next, p.deadline);
        continue;
      }
      this.pending.delete(id);
      p.batch.complete(new VfioUserError(Errno.ETIMEDOUT, `no reply to ${commandName(p.command)} in time`));
    }
    return next;
  }

  /** The session ends: every outstanding request fails. */
  failPending(): void {
    const error = new VfioUserError(Errno.ECONNRESET, "the client went away during DMA");
    for (const p of this.pending.values()) p.batch.complete(error);
    this.pending.clear();
  }

  /** Sends DMA requests of at most the client's transfer size, each answered before the next. */
  private dmaTransfer(command: number, address: bigint, bytes: Uint8Array): void {
    const target = this.twin ?? this.conn;
    const chunkMax = Math.min(this.peer.maxDataXferSize, target.options.maxMessageSize - HEADER_SIZE - 32);
    for (let done = 0; done < bytes.length;) {
      const count = Math.min(chunkMax, bytes.length - done);
      const w = target.payloadWriter();
      const isWrite = command === Command.DMA_WRITE;
      encodeDmaAccess(
        w,
        address + BigInt(done),
        count,
        isWrite ? bytes.subarray(done, done + count) : undefined,
      );
      const id = target.allocateId();
      target.send(id, command, FLAG_TYPE_COMMAND, 0, w.length);
      const reply = this.awaitReply(target, id, command);
      try {
        if (reply.isError)
          throw new VfioUserError(reply.error || Errno.EIO, `client refused ${commandName(command)}`);
        if (!isWrite) bytes.set(decodeDmaReadReply(reply.reader(), count), done);
      } finally {
        target.release(reply);
      }
      done += count;
    }
  }

  /**
   * Waits (at most timeoutMs) for the reply to our request `id`, sending our
   * queued output meanwhile and setting the client's own requests aside.
   */
  private awaitReply(target: Connection, id: number, command: number): Message {
    try {
      return this.awaitReplyOn(target, id, command);
    } catch (e) {
      // The stream is lost (framing, a full buffer, the peer gone): whatever the
      // device does with the error, the loop must end this session.
      if (
        e instanceof ProtocolError ||
        e instanceof SysError ||
        (e instanceof VfioUserError && e.errno === Errno.ECONNRESET)
      )
        this.failure ??= e.message;
      throw e;
    }
  }

  private awaitReplyOn(target: Connection, id: number, command: number): Message {
    const deadline = Date.now() + this.limits.timeoutMs;
    for (;;) {
      let m: Message | null;
      while ((m = target.next()) !== null) {
        if (m.isReply && m.id === id && m.command === command) return m;
        if (m.isReply && this.completeReply(m)) {
          target.release(m);
          continue;
        }
        if (target === this.conn && !m.isReply) {
          // Set aside, copied: bounded like our output, or a client could fill memory while we wait.
          this.deferredBytes += m.size;
          if (this.deferredBytes > this.limits.queueLimit) {
            target.release(m);
            // Recorded too: the device may swallow the error, the session must still end.
            this.failure = `${this.deferredBytes} bytes of requests sent while we waited for a DMA reply`;
            throw new ProtocolError(this.failure);
          }
          this.deferred.push(target.detach(m));
        } else {
          this.log.warn(
            { id: m.id, command: m.command },
            "unexpected message while waiting for a reply; dropped",
          );
          target.release(m);
        }
      }
      const flushed = target.flush();
      const left = deadline - Date.now();
      if (left <= 0) throw new VfioUserError(Errno.ETIMEDOUT, `no reply to ${commandName(command)}`);
      const ready = pollOne(target.fd, POLLIN | (flushed ? 0 : POLLOUT), left);
      if (ready & (POLLIN | POLLHUP | POLLERR) && target.fill(false) === "eof")
        throw new VfioUserError(Errno.ECONNRESET, "client went away during DMA");
    }
  }
}
