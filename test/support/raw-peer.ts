/**
 * A raw vfio-user speaker for hostile-input tests: frames messages by hand,
 * reads whole replies, and answers any request of the server with an error so
 * the server is never left waiting.
 */
import assert from "node:assert/strict";
import { SocketChannel, SysError, closeFd, connectUnix } from "../../src/sys/index.js";
import {
  Command,
  FLAG_ERROR,
  FLAG_TYPE_MASK,
  FLAG_TYPE_REPLY,
  HEADER_SIZE,
} from "../../src/vfio-user/index.js";

export interface RawReply {
  readonly id: number;
  readonly command: number;
  readonly flags: number;
  readonly error: number;
  readonly size: number;
  readonly payload: Buffer;
}

export class RawPeer {
  readonly ch: SocketChannel;
  private buf = Buffer.alloc(0);
  closedByServer = false;
  /** Keep the server's requests in `requests` instead of refusing them (a VMM that sits on them). */
  holdRequests = false;
  readonly requests: RawReply[] = [];

  constructor(path: string) {
    this.ch = new SocketChannel(connectUnix(path), { capacity: 4 << 20 });
  }

  send(bytes: Uint8Array, fds?: number[]): void {
    this.ch.sendBytes(bytes, fds);
  }

  /** Reads whole messages until the one with `id` arrives (or the server closes); returns the replies read. */
  readUntil(id: number, options: { orRequest?: boolean } = {}): RawReply[] {
    const got: RawReply[] = [];
    for (;;) {
      while (this.buf.length >= HEADER_SIZE) {
        const size = this.buf.readUInt32LE(4);
        if (this.buf.length < size) break;
        const m = {
          id: this.buf.readUInt16LE(0),
          command: this.buf.readUInt16LE(2),
          flags: this.buf.readUInt32LE(8),
          error: this.buf.readUInt32LE(12),
          size,
          payload: Buffer.from(this.buf.subarray(HEADER_SIZE, size)),
        };
        this.buf = this.buf.subarray(size);
        if ((m.flags & FLAG_TYPE_MASK) !== FLAG_TYPE_REPLY) {
          // A server request (DMA): refuse it so the server is not left waiting, or keep it.
          if (this.holdRequests) this.requests.push(m);
          else this.send(header(m.id, m.command, FLAG_TYPE_REPLY | FLAG_ERROR, 14, 0));
          if (options.orRequest && this.holdRequests) return got;
          continue;
        }
        got.push(m);
        if (m.id === id) return got;
      }
      let n: number;
      try {
        n = this.ch.recv(0, this.ch.recvBuffer.length, true);
      } catch (e) {
        // A server that closes with our requests still unread resets the stream (AF_UNIX
        // reports ECONNRESET then): closed by the server all the same.
        if (!(e instanceof SysError && e.code === "ECONNRESET")) throw e;
        this.closedByServer = true;
        return got;
      }
      for (const fd of this.ch.receivedFds) closeFd(fd);
      if (n === 0) {
        this.closedByServer = true;
        return got;
      }
      this.buf = Buffer.concat([this.buf, this.ch.recvBuffer.subarray(0, n)]);
    }
  }

  /** Sends one request and returns its reply. */
  request(
    id: number,
    command: number,
    payload: Uint8Array,
    options: { flags?: number; fds?: number[] } = {},
  ): RawReply {
    this.send(message(id, command, options.flags ?? 0, payload), options.fds);
    const r = this.readUntil(id).at(-1);
    assert.ok(r && r.id === id, `no reply to message ${id}`);
    return r;
  }

  handshake(capabilities: Record<string, unknown> = { max_msg_fds: 16, write_multiple: true }): RawReply {
    const reply = this.request(1, Command.VERSION, versionPayload(capabilities));
    assert.equal(reply.flags & FLAG_ERROR, 0, `VERSION refused: errno ${reply.error}`);
    return reply;
  }

  close(): void {
    this.ch.close();
  }
}

export function versionPayload(capabilities: Record<string, unknown>): Buffer {
  const json = Buffer.from(JSON.stringify({ capabilities }) + "\0");
  return Buffer.concat([Buffer.from([0, 0, 0, 0]), json]);
}

export function header(
  id: number,
  command: number,
  flags: number,
  error: number,
  payloadLength: number,
): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeUInt16LE(id, 0);
  h.writeUInt16LE(command, 2);
  h.writeUInt32LE(HEADER_SIZE + payloadLength, 4);
  h.writeUInt32LE(flags >>> 0, 8);
  h.writeUInt32LE(error, 12);
  return h;
}

export function message(id: number, command: number, flags: number, payload: Uint8Array): Buffer {
  return Buffer.concat([header(id, command, flags, 0, payload.length), payload]);
}

/** Little-endian fields, concatenated. */
export function le(...fields: [bits: 16 | 32 | 64, value: number | bigint][]): Buffer {
  return Buffer.concat(
    fields.map(([bits, v]) => {
      const b = Buffer.alloc(bits / 8);
      if (bits === 16) b.writeUInt16LE(Number(v));
      else if (bits === 32) b.writeUInt32LE(Number(v) >>> 0);
      else b.writeBigUInt64LE(BigInt(v));
      return b;
    }),
  );
}
