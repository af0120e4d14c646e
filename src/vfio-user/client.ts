/**
 * The VMM side of vfio-user: a typed method per command. Calls are synchronous,
 * like a vCPU that traps on an MMIO access and waits for the device: a request
 * is one sendmsg, its reply one recvmsg. Requests the server sends us
 * (DMA_READ / DMA_WRITE) are answered while we wait, or when idle through
 * `serviceRequests()` / `startService()`.
 */
import {
  EventFd,
  POLLIN,
  Poller,
  connectUnix,
  setReceiveTimeout,
  setSendTimeout,
  shutdownSocket,
} from "../sys/index.js";
import { type Capabilities, parseCapabilities, serializeCapabilities } from "./capabilities.js";
import { Connection, type Message } from "./connection.js";
import {
  Command,
  DEFAULT_MAX_DMA_MAPS,
  DMA_UNMAP_FLAG_ALL,
  DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  FLAG_TYPE_COMMAND,
  FLAG_TYPE_REPLY,
  HEADER_SIZE,
  VERSION_MAJOR,
  VERSION_MINOR,
  commandName,
} from "./constants.js";
import { Errno, ProtocolError, VfioUserError, invalid } from "./errors.js";
import { type Logger, RateLimitedLog, defaultLogger } from "../base/index.js";
import {
  DEVICE_INFO_SIZE,
  DMA_BITMAP_SIZE,
  DMA_UNMAP_SIZE,
  type DeviceInfo,
  type DmaMapRequest,
  FEATURE_HEADER_SIZE,
  IO_FDS_HEADER_SIZE,
  type IoFdSubRegion,
  type IrqInfo,
  MIG_DATA_HEADER_SIZE,
  REGION_ACCESS_SIZE,
  REGION_INFO_SIZE,
  type RegionInfo,
  type SetIrqsRequest,
  type SmallWrite,
  type VersionPayload,
  decodeDeviceInfo,
  decodeDmaAccess,
  decodeIoFds,
  decodeIrqInfo,
  decodeRegionInfo,
  decodeVersion,
  encodeDmaAccess,
  encodeDmaMap,
  encodeDmaUnmap,
  encodeDmaWriteReply,
  encodeFeature,
  encodeIoFdsRequest,
  encodeIrqInfoRequest,
  encodeRegionAccess,
  encodeRegionInfoRequest,
  encodeSetIrqs,
  encodeVersion,
  encodeWriteMulti,
} from "./messages.js";

/** Serves the server's DMA_READ/DMA_WRITE for memory mapped without an fd. */
export interface ClientMemory {
  read(address: bigint, out: Uint8Array): void;
  write(address: bigint, data: Uint8Array): void;
}

export interface ClientOptions {
  /** Most data we accept in one read/write message. */
  readonly maxDataXferSize?: number;
  /** Most fds we accept in one message. */
  readonly maxMsgFds?: number;
  /** Ask for twin-socket mode (server-to-client requests on their own socket). */
  readonly twinSocket?: boolean;
  /** Offer REGION_WRITE_MULTI. */
  readonly writeMultiple?: boolean;
  /** Reply timeout (QEMU's default is 5 s). */
  readonly timeoutMs?: number;
  /** Backs DMA_READ/DMA_WRITE; without it those requests fail with EFAULT. */
  readonly memory?: ClientMemory;
  /** Extra JSON fields for the VERSION capabilities (e.g. QEMU's legacy `migration`). */
  readonly extraCapabilities?: Record<string, unknown>;
  readonly logger?: Logger;
}

export interface RegionInfoWithFd extends RegionInfo {
  /** The fd to mmap, if the server sent one (the caller owns it). */
  readonly fd?: number;
}

export class Client {
  /** The server's capabilities from the VERSION reply. */
  server!: Capabilities;
  version!: VersionPayload;
  private readonly conn: Connection;
  private twin: Connection | undefined;
  private readonly log: RateLimitedLog;
  private readonly maxDataXferSize: number;
  private readonly maxMessageSize: number;
  private memory: ClientMemory | undefined;
  private service: { poller: Poller; wake: EventFd; running: boolean } | undefined;

  private constructor(
    fd: number,
    private readonly options: ClientOptions,
  ) {
    this.log = new RateLimitedLog(options.logger ?? defaultLogger());
    this.maxDataXferSize = options.maxDataXferSize ?? 1 << 20;
    this.maxMessageSize = HEADER_SIZE + 64 + Math.max(this.maxDataXferSize, 64 * 1024);
    const timeout = options.timeoutMs ?? 5000;
    setSendTimeout(fd, timeout);
    setReceiveTimeout(fd, timeout);
    this.conn = new Connection(fd, { maxMessageSize: this.maxMessageSize, maxFds: options.maxMsgFds ?? 16 });
    this.memory = options.memory;
  }

  /** Connects to a server socket and negotiates the protocol version. */
  static connect(path: string, options: ClientOptions = {}): Client {
    return Client.fromFd(connectUnix(path), options);
  }

  /** Negotiates over an already-connected socket (the client owns it from now on). */
  static fromFd(fd: number, options: ClientOptions = {}): Client {
    const c = new Client(fd, options);
    try {
      c.negotiate();
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  /** Most bytes one REGION_READ/WRITE may carry to this server. */
  get maxTransfer(): number {
    return Math.min(this.server.maxDataXferSize, this.maxDataXferSize);
  }

  /** The socket the server's own requests arrive on (poll it while idle, then serviceRequests()). */
  get serviceFd(): number {
    return (this.twin ?? this.conn).fd;
  }

  get twinSocket(): boolean {
    return this.twin !== undefined;
  }

  setMemory(memory: ClientMemory | undefined): void {
    this.memory = memory;
  }

  private negotiate(): void {
    const caps = JSON.parse(
      serializeCapabilities({
        maxMsgFds: this.options.maxMsgFds ?? 16,
        maxDataXferSize: this.maxDataXferSize,
        maxDmaMaps: DEFAULT_MAX_DMA_MAPS,
        pgsizes: 4096,
        writeMultiple: this.options.writeMultiple ?? false,
        twinSocket: { supported: this.options.twinSocket ?? false },
      }),
    ) as { capabilities: Record<string, unknown> };
    Object.assign(caps.capabilities, this.options.extraCapabilities ?? {});
    const w = this.conn.payloadWriter();
    encodeVersion(w, { major: VERSION_MAJOR, minor: VERSION_MINOR, json: JSON.stringify(caps) });
    const reply = this.request(Command.VERSION, w.length);
    try {
      this.version = decodeVersion(reply.reader());
      if (this.version.major !== VERSION_MAJOR)
        throw new ProtocolError(`server speaks major ${this.version.major}`);
      this.server = parseCapabilities(this.version.json);
      const twin = this.server.twinSocket;
      if (twin.supported && this.options.twinSocket) {
        const fd = twin.fdIndex === undefined ? undefined : reply.fds[twin.fdIndex];
        if (fd === undefined) throw new ProtocolError("server enabled twin-socket mode without a socket");
        reply.fds.splice(twin.fdIndex!, 1);
        this.twin = new Connection(fd, { maxMessageSize: this.maxMessageSize, maxFds: 0 });
      }
    } finally {
      this.conn.release(reply);
    }
  }

  getDeviceInfo(): DeviceInfo {
    const w = this.conn.payloadWriter();
    w.u32(DEVICE_INFO_SIZE).u32(0).u32(0).u32(0);
    return this.decode(this.request(Command.DEVICE_GET_INFO, w.length), (m) => decodeDeviceInfo(m.reader()));
  }

  /** Region info with its capability chain (asking again with a larger argsz if needed). */
  getRegionInfo(index: number): RegionInfoWithFd {
    let argsz = REGION_INFO_SIZE + 256;
    for (let attempt = 0; attempt < 2; attempt++) {
      const w = this.conn.payloadWriter();
      encodeRegionInfoRequest(w, argsz, index);
      const reply = this.request(Command.DEVICE_GET_REGION_INFO, w.length);
      try {
        const info = decodeRegionInfo(reply.reader());
        if (info.argsz > argsz && attempt === 0) {
          argsz = info.argsz;
          continue;
        }
        const fd = reply.fds.shift();
        const { argsz: _a, hasCaps: _h, ...rest } = info;
        return fd === undefined ? rest : { ...rest, fd };
      } finally {
        this.conn.release(reply);
      }
    }
    throw new ProtocolError("server keeps growing the region info");
  }

  getRegionIoFds(index: number): { subRegions: IoFdSubRegion[]; fds: number[] } {
    let argsz = IO_FDS_HEADER_SIZE + 40 * 16;
    for (let attempt = 0; attempt < 2; attempt++) {
      const w = this.conn.payloadWriter();
      encodeIoFdsRequest(w, argsz, index);
      const reply = this.request(Command.DEVICE_GET_REGION_IO_FDS, w.length);
      try {
        const r = decodeIoFds(reply.reader());
        if (r.argsz > argsz && attempt === 0) {
          argsz = r.argsz;
          continue;
        }
        return { subRegions: r.subRegions, fds: reply.fds.splice(0) };
      } finally {
        this.conn.release(reply);
      }
    }
    throw new ProtocolError("server keeps growing the I/O fd list");
  }

  getIrqInfo(index: number): IrqInfo {
    const w = this.conn.payloadWriter();
    encodeIrqInfoRequest(w, index);
    return this.decode(this.request(Command.DEVICE_GET_IRQ_INFO, w.length), (m) => decodeIrqInfo(m.reader()));
  }

  /** SET_IRQS; eventfds are sent in chunks of the server's max_msg_fds, as QEMU does. */
  setIrqs(request: SetIrqsRequest, eventfds: readonly number[] = []): void {
    const perMessage = Math.max(1, this.server.maxMsgFds);
    if (eventfds.length <= perMessage) return this.setIrqsOnce(request, eventfds);
    for (let i = 0; i < eventfds.length; i += perMessage) {
      const chunk = eventfds.slice(i, i + perMessage);
      this.setIrqsOnce({ ...request, start: request.start + i, count: chunk.length }, chunk);
    }
  }

  private setIrqsOnce(request: SetIrqsRequest, eventfds: readonly number[]): void {
    const w = this.conn.payloadWriter();
    encodeSetIrqs(w, request);
    this.release(this.request(Command.DEVICE_SET_IRQS, w.length, eventfds));
  }

  /** Reads `out.length` bytes at `offset`; larger reads are split to fit the server's limit. */
  regionRead(region: number, offset: number, out: Uint8Array): void {
    const max = this.maxTransfer;
    for (let done = 0; done < out.length;) {
      const count = Math.min(max, out.length - done);
      this.regionReadChunk(region, offset + done, out, done, count);
      done += count;
    }
  }

  /** A whole REGION_READ round trip without allocation. */
  private regionReadChunk(
    region: number,
    offset: number,
    out: Uint8Array,
    outOffset: number,
    count: number,
  ): void {
    encodeRegionAccess(this.conn.sendView, HEADER_SIZE, offset, region, count);
    const reply = this.request(Command.REGION_READ, REGION_ACCESS_SIZE);
    try {
      if (
        reply.payloadLength !== REGION_ACCESS_SIZE + count ||
        reply.view.getUint32(reply.payloadOffset + 12, true) !== count
      )
        throw new ProtocolError("REGION_READ reply has the wrong size");
      const src = this.conn.channel.recvBuffer;
      const at = reply.payloadOffset + REGION_ACCESS_SIZE;
      if (count <= 8) for (let i = 0; i < count; i++) out[outOffset + i] = src[at + i]!;
      else out.set(src.subarray(at, at + count), outOffset);
    } finally {
      this.conn.release(reply);
    }
  }

  /**
   * Writes `data` at `offset`. A posted write (`posted: true`) asks for no reply,
   * as QEMU does for regions without mmap areas; errors then only reach the log.
   */
  regionWrite(region: number, offset: number, data: Uint8Array, options: { posted?: boolean } = {}): void {
    const max = this.maxTransfer;
    for (let done = 0; done < data.length || (done === 0 && data.length === 0);) {
      const count = Math.min(max, data.length - done);
      if (count === 0) throw invalid("empty REGION_WRITE");
      encodeRegionAccess(this.conn.sendView, HEADER_SIZE, offset + done, region, count);
      const payload = this.conn.sendPayload;
      if (count <= 8) for (let i = 0; i < count; i++) payload[REGION_ACCESS_SIZE + i] = data[done + i]!;
      else payload.set(data.subarray(done, done + count), REGION_ACCESS_SIZE);
      if (options.posted) this.post(Command.REGION_WRITE, REGION_ACCESS_SIZE + count);
      else this.release(this.request(Command.REGION_WRITE, REGION_ACCESS_SIZE + count));
      done += count;
    }
  }

  /** Several small writes (≤ 8 bytes each) in one message; needs write_multiple on both sides. */
  regionWriteMulti(writes: readonly SmallWrite[]): number {
    if (!this.server.writeMultiple) throw invalid("server did not agree to write_multiple");
    const w = this.conn.payloadWriter();
    encodeWriteMulti(w, writes);
    return this.decode(this.request(Command.REGION_WRITE_MULTI, w.length), (m) => m.reader().u64n("wr_cnt"));
  }

  /** Makes guest memory available; with an fd the server can mmap it, without it uses DMA_READ/WRITE. */
  dmaMap(request: DmaMapRequest, fd?: number): void {
    const w = this.conn.payloadWriter();
    encodeDmaMap(w, request);
    this.release(this.request(Command.DMA_MAP, w.length, fd === undefined ? [] : [fd]));
  }

  /** Unmaps one mapping (exact address and size), or all of them with `{ all: true }`. */
  dmaUnmap(address: bigint, size: bigint, options: { all?: boolean } = {}): void {
    const w = this.conn.payloadWriter();
    const flags = options.all ? DMA_UNMAP_FLAG_ALL : 0;
    encodeDmaUnmap(w, { argsz: DMA_UNMAP_SIZE, flags, address, size });
    this.release(this.request(Command.DMA_UNMAP, w.length));
  }

  /** Unmaps and returns the dirty bitmap (one bit per `pgsize` bytes) the server kept for it. */
  dmaUnmapWithDirtyBitmap(address: bigint, size: bigint, pgsize: bigint): Uint8Array {
    const pages = Number((size + pgsize - 1n) / pgsize);
    const bitmapSize = Math.ceil(pages / 64) * 8;
    const w = this.conn.payloadWriter();
    encodeDmaUnmap(w, {
      argsz: DMA_UNMAP_SIZE + DMA_BITMAP_SIZE + bitmapSize,
      flags: DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
      address,
      size,
      bitmap: { pgsize, size: bitmapSize },
    });
    return this.decode(this.request(Command.DMA_UNMAP, w.length), (m) => {
      const r = m.reader();
      r.skipTo(DMA_UNMAP_SIZE + DMA_BITMAP_SIZE, "bitmap");
      return r.bytes(bitmapSize, "bitmap").slice();
    });
  }

  reset(): void {
    this.release(this.request(Command.DEVICE_RESET, 0));
  }

  /** DEVICE_FEATURE: returns the reply's data (after argsz and flags). */
  feature(flags: number, data: Uint8Array = new Uint8Array(0), replyRoom = 0): Uint8Array {
    const w = this.conn.payloadWriter();
    encodeFeature(w, FEATURE_HEADER_SIZE + Math.max(data.length, replyRoom), flags, data);
    return this.decode(this.request(Command.DEVICE_FEATURE, w.length), (m) => {
      const r = m.reader();
      r.u32("argsz");
      r.u32("flags");
      return r.bytes(r.remaining, "data").slice();
    });
  }

  /** Up to `size` bytes of migration data; fewer means the end of the stream. */
  migrationRead(size: number): Uint8Array {
    const w = this.conn.payloadWriter();
    w.u32(MIG_DATA_HEADER_SIZE + size).u32(size);
    return this.decode(this.request(Command.MIG_DATA_READ, w.length), (m) => {
      const r = m.reader();
      r.u32("argsz");
      const n = r.u32("size");
      if (n > size) throw new ProtocolError("MIG_DATA_READ returned more than asked");
      return r.bytes(n, "data").slice();
    });
  }

  migrationWrite(data: Uint8Array): void {
    const w = this.conn.payloadWriter();
    w.u32(MIG_DATA_HEADER_SIZE + data.length)
      .u32(data.length)
      .bytes(data);
    this.release(this.request(Command.MIG_DATA_WRITE, w.length));
  }

  /** Handles requests the server has queued (DMA_READ/WRITE) without blocking; returns how many. */
  serviceRequests(): number {
    const target = this.twin ?? this.conn;
    let handled = 0;
    for (;;) {
      let m: Message | null;
      while ((m = target.next()) !== null) {
        handled++;
        this.handleIncoming(target, m);
      }
      const got = target.fill(false);
      if (got === "empty") return handled;
      if (got === "eof") throw new ProtocolError("server closed the connection");
    }
  }

  /**
   * Services server requests from the event loop while the client is idle (a
   * poll on a worker thread wakes it). Synchronous calls may still be made.
   */
  startService(): void {
    if (this.service) return;
    const wake = new EventFd(undefined, { nonBlocking: true });
    const poller = new Poller(2);
    poller.setAll([(this.twin ?? this.conn).fd, wake.fd], POLLIN);
    const service = { poller, wake, running: true };
    this.service = service;
    const loop = async (): Promise<void> => {
      while (service.running) {
        // Requests read along with an earlier reply are in our buffer, not in the socket: serve them first.
        try {
          this.serviceRequests();
        } catch (e) {
          this.log.warn({ err: String(e) }, "stopping request service");
          break;
        }
        await poller.waitAsync(-1);
        if (!service.running) break;
        if (poller.revents(1)) wake.read();
        try {
          this.serviceRequests();
        } catch (e) {
          this.log.warn({ err: String(e) }, "stopping request service");
          break;
        }
      }
      poller.close();
      wake.close();
    };
    void loop();
  }

  private closed = false;

  stopService(): void {
    if (!this.service) return;
    this.service.running = false;
    this.service.wake.signal();
    this.service = undefined;
  }

  close(): void {
    if (this.closed) return; // its fd numbers may belong to someone else by now
    this.closed = true;
    this.stopService();
    // The request service's poll, on a worker thread, holds the socket open until it
    // wakes: shut it down first, so the server sees the hang-up now and a client that
    // reconnects at once finds the device free.
    if (this.twin) shutdownSocket(this.twin.fd);
    shutdownSocket(this.conn.fd);
    this.twin?.close();
    this.conn.close();
  }

  // ---- request plumbing ---------------------------------------------------

  /** Sends a request whose payload is already in the send buffer; waits for and returns its reply. */
  private request(command: number, payloadLength: number, fds?: readonly number[]): Message {
    const id = this.conn.allocateId();
    this.conn.send(id, command, FLAG_TYPE_COMMAND, 0, payloadLength, fds);
    return this.awaitReply(this.conn, id, command, true);
  }

  private post(command: number, payloadLength: number): void {
    this.conn.send(this.conn.allocateId(), command, FLAG_TYPE_COMMAND | FLAG_NO_REPLY, 0, payloadLength);
  }

  /** Waits for reply `id`, serving server requests that arrive meanwhile. */
  private awaitReply(conn: Connection, id: number, command: number, throwOnError: boolean): Message {
    for (;;) {
      let m: Message | null;
      while ((m = conn.next()) !== null) {
        if (m.isReply && m.id === id) {
          if (m.command !== command) {
            conn.release(m);
            throw new ProtocolError(`reply to ${commandName(command)} says ${commandName(m.command)}`);
          }
          if (throwOnError && m.isError) {
            const errno = m.error || Errno.EIO;
            conn.release(m);
            throw new VfioUserError(errno, `${commandName(command)} refused by the server`);
          }
          return m;
        }
        this.handleIncoming(conn, m);
      }
      if (this.twin) this.waitEither(conn);
      else if (conn.fill(true) === "eof") throw new ProtocolError("server closed the connection");
    }
  }

  /** In twin-socket mode a reply on the main socket may wait on our answer to a request on the twin. */
  private waitEither(conn: Connection): void {
    const twin = this.twin!;
    const poller = this.twinPoller ?? (this.twinPoller = new Poller(2));
    poller.setAll([conn.fd, twin.fd], POLLIN);
    if (poller.wait(this.options.timeoutMs ?? 5000) === 0)
      throw new VfioUserError(Errno.ETIMEDOUT, "no reply");
    if (poller.revents(1)) {
      if (twin.fill(false) === "eof") throw new ProtocolError("server closed the twin socket");
      let m: Message | null;
      while ((m = twin.next()) !== null) this.handleIncoming(twin, m);
    }
    if (poller.revents(0) && conn.fill(false) === "eof")
      throw new ProtocolError("server closed the connection");
  }
  private twinPoller: Poller | undefined;

  /** A message that is not the reply we wait for: a server request, or a stray reply. */
  private handleIncoming(conn: Connection, m: Message): void {
    try {
      if (m.isReply) {
        // Replies to posted writes never come; anything else here is a late or stray reply.
        if (m.isError)
          this.log.warn({ id: m.id, command: commandName(m.command), errno: m.error }, "request failed");
        return;
      }
      if (m.command !== Command.DMA_READ && m.command !== Command.DMA_WRITE) {
        this.replyError(conn, m, Errno.EINVAL);
        return;
      }
      this.handleDma(conn, m);
    } finally {
      conn.release(m);
    }
  }

  private handleDma(conn: Connection, m: Message): void {
    let errno = 0;
    let length = 0;
    try {
      const req = decodeDmaAccess(m.reader(), m.command === Command.DMA_WRITE, this.maxDataXferSize);
      if (!this.memory) throw new VfioUserError(Errno.EFAULT, "no memory mapped without fds");
      const w = conn.payloadWriter();
      if (req.data) {
        this.memory.write(req.address, req.data);
        encodeDmaWriteReply(w, req.address, req.count);
      } else {
        encodeDmaAccess(w, req.address, req.count);
        this.memory.read(req.address, w.reserve(req.count));
      }
      length = w.length;
    } catch (e) {
      errno = e instanceof VfioUserError ? e.errno : Errno.EFAULT;
      this.log.warn({ command: commandName(m.command), err: String(e) }, "server DMA request refused");
    }
    if (m.noReply) return;
    if (errno) this.replyError(conn, m, errno);
    else conn.send(m.id, m.command, FLAG_TYPE_REPLY, 0, length);
  }

  private replyError(conn: Connection, m: Message, errno: number): void {
    if (!m.noReply) conn.send(m.id, m.command, FLAG_TYPE_REPLY | FLAG_ERROR, errno, 0);
  }

  private release(m: Message): void {
    this.conn.release(m);
  }

  private decode<T>(m: Message, fn: (m: Message) => T): T {
    try {
      return fn(m);
    } finally {
      this.conn.release(m);
    }
  }
}
