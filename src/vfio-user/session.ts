/**
 * One client connection and what was negotiated on it, and the requests the
 * server itself sends that client (DMA_READ/DMA_WRITE for memory it mapped
 * without an fd), with the wait for their replies.
 */
import { RateLimitedLog } from "../base/index.js";
import { POLLERR, POLLHUP, POLLIN, POLLOUT, pollOne } from "../sys/index.js";
import type { Capabilities } from "./capabilities.js";
import { defaultCapabilities } from "./capabilities.js";
import { Connection, type Message } from "./connection.js";
import { Command, FLAG_TYPE_COMMAND, HEADER_SIZE, commandName } from "./constants.js";
import type { DeviceSession, VfioDevice } from "./device.js";
import type { Endpoint } from "./endpoint.js";
import { Errno, VfioUserError } from "./errors.js";
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

export class Session implements DeviceSession {
  negotiated = false;
  peer: Capabilities = defaultCapabilities;
  twin: Connection | undefined;
  /** Messages that arrived while we waited for a reply to our own request. */
  readonly deferred: Message[] = [];
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
    const deadline = Date.now() + this.limits.timeoutMs;
    for (;;) {
      let m: Message | null;
      while ((m = target.next()) !== null) {
        if (m.isReply && m.id === id && m.command === command) return m;
        if (target === this.conn && !m.isReply) this.deferred.push(target.detach(m));
        else {
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
