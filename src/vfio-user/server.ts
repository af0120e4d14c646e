/**
 * The device side of vfio-user. A Server listens on a UNIX socket, negotiates
 * VERSION with each client, and dispatches every command to a VfioDevice.
 *
 * Threading: `run()` is a blocking loop (poll → recvmsg → handler → sendmsg) on
 * the thread that calls it, with no event-loop hop between a trapped access and
 * its reply. Run it in a worker thread or its own process; `stop()` or a signal
 * on `wakeFd` from any thread ends it.
 */
import { rmSync } from "node:fs";
import {
  EventFd,
  POLLERR,
  POLLHUP,
  POLLIN,
  Poller,
  SysError,
  acceptUnix,
  closeFd,
  listenUnix,
  setReceiveTimeout,
  setSendTimeout,
  socketPair,
} from "../sys/index.js";
import {
  type Capabilities,
  defaultCapabilities,
  parseCapabilities,
  serializeCapabilities,
} from "./capabilities.js";
import { Connection, type Message } from "./connection.js";
import {
  Command,
  DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  FLAG_ERROR,
  FLAG_TYPE_COMMAND,
  FLAG_TYPE_MASK,
  FLAG_TYPE_REPLY,
  HEADER_SIZE,
  REGION_INFO_FLAG_MMAP,
  VERSION_MAJOR,
  VERSION_MINOR,
  commandName,
} from "./constants.js";
import type { DeviceSession, VfioDevice } from "./device.js";
import { Errno, ProtocolError, VfioUserError, invalid } from "./errors.js";
import { type Logger, RateLimitedLog, defaultLogger } from "../base/index.js";
import {
  DEVICE_INFO_SIZE,
  FEATURE_HEADER_SIZE,
  MIG_DATA_HEADER_SIZE,
  REGION_ACCESS_SIZE,
  decodeDmaMap,
  decodeDmaUnmap,
  decodeFeature,
  decodeIoFdsRequest,
  decodeIrqInfoRequest,
  decodeRegionInfoRequest,
  decodeSetIrqs,
  decodeVersion,
  decodeWriteMulti,
  encodeDeviceInfo,
  encodeDmaUnmap,
  encodeIoFds,
  encodeIrqInfo,
  encodeRegionInfo,
  encodeVersion,
  regionInfoFullSize,
} from "./messages.js";

export interface ServerOptions {
  /** Most data accepted in one read/write message (advertised as max_data_xfer_size). */
  readonly maxDataXferSize?: number;
  /** Most fds accepted in one message (advertised as max_msg_fds). */
  readonly maxMsgFds?: number;
  /** Offer twin-socket mode to clients that support it. */
  readonly twinSocket?: boolean;
  /** Accept REGION_WRITE_MULTI from clients that offer it. */
  readonly writeMultiple?: boolean;
  /** How long to wait for a client's reply to DMA_READ/DMA_WRITE, or for it to take ours. */
  readonly timeoutMs?: number;
  /** Most clients connected at once; further ones are closed at once. */
  readonly maxConnections?: number;
  /**
   * Runs after every poll round on the serving thread (device work that is not
   * a reply: a scheduler, timers). Returning true means more work is waiting,
   * so the next poll does not sleep.
   */
  readonly afterRound?: () => boolean;
  /** Longest sleep in poll when idle (ms); -1 for none (default 1000, for afterRound). */
  readonly idleTimeoutMs?: number;
  readonly logger?: Logger;
}

/** Counters kept on the trap path (no allocation per message). */
export class ServerStats {
  readonly commands = new Float64Array(32);
  readonly regionReads = new Float64Array(16);
  readonly regionWrites = new Float64Array(16);
  errorReplies = 0;
  /** Error replies by errno value (values past 255 share the last slot). */
  readonly errorsByErrno = new Float64Array(256);
  connectionsAccepted = 0;
  connectionsClosedOnError = 0;
}

type Handler = (s: Session, m: Message) => number;

interface Watched {
  readonly fd: number;
  readonly onReadable: () => void;
}

/** One device served on one listening socket (a server can hold several). */
export class Endpoint {
  readonly stats = new ServerStats();
  constructor(
    readonly device: VfioDevice,
    public listenFd: number,
    public path: string | undefined,
  ) {}
}

/** One client connection and its negotiated state. */
class Session implements DeviceSession {
  negotiated = false;
  peer: Capabilities = defaultCapabilities;
  twin: Connection | undefined;
  /** Messages that arrived while we waited for a reply to our own request. */
  readonly deferred: Message[] = [];
  /** Fds to send with the reply being built. */
  replyFds: number[] = [];
  /** Fds to close once the reply is sent (the client's end of a twin socket). */
  closeAfterReply: number[] = [];
  attached = false;

  constructor(
    readonly endpoint: Endpoint,
    readonly conn: Connection,
    readonly log: RateLimitedLog,
  ) {}

  get device(): VfioDevice {
    return this.endpoint.device;
  }

  dmaRead(address: bigint, out: Uint8Array): void {
    this.dmaTransfer(Command.DMA_READ, address, out);
  }

  dmaWrite(address: bigint, data: Uint8Array): void {
    this.dmaTransfer(Command.DMA_WRITE, address, data);
  }

  private dmaTransfer(command: number, address: bigint, bytes: Uint8Array): void {
    const target = this.twin ?? this.conn;
    const chunkMax = Math.min(this.peer.maxDataXferSize, target.options.maxMessageSize - HEADER_SIZE - 32);
    for (let done = 0; done < bytes.length;) {
      const count = Math.min(chunkMax, bytes.length - done);
      const w = target.payloadWriter();
      w.u64(address + BigInt(done)).u64(count);
      if (command === Command.DMA_WRITE) w.bytes(bytes.subarray(done, done + count));
      const id = target.allocateId();
      target.send(id, command, FLAG_TYPE_COMMAND, 0, w.length);
      const reply = this.awaitReply(target, id, command);
      try {
        if (reply.isError)
          throw new VfioUserError(reply.error || Errno.EIO, `client refused ${commandName(command)}`);
        const r = reply.reader();
        r.u64("address");
        if (command === Command.DMA_READ) {
          const got = r.u64n("count");
          if (got !== count || r.remaining !== count)
            throw new VfioUserError(Errno.EIO, "short DMA_READ reply");
          bytes.set(r.bytes(count, "data"), done);
        }
      } finally {
        target.release(reply);
      }
      done += count;
    }
  }

  /** Blocks until the reply to our request `id` arrives, setting other messages aside. */
  private awaitReply(target: Connection, id: number, command: number): Message {
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
      if (target.fill(true) === "eof")
        throw new VfioUserError(Errno.ECONNRESET, "client went away during DMA");
    }
  }
}

export class Server {
  private readonly wake = new EventFd(undefined, { nonBlocking: true });
  private readonly poller = new Poller(8);
  private readonly sessions: Session[] = [];
  private readonly endpoints: Endpoint[] = [];
  private readonly primary: Endpoint | undefined;
  /** What each poll slot after the wake fd stands for. */
  private slots: (Endpoint | Session | Watched)[] = [];
  private readonly watched: Watched[] = [];
  private pollDirty = true;
  private stopping = false;
  private readonly log: Logger;
  private readonly maxDataXferSize: number;
  private readonly maxMsgFds: number;
  private readonly maxMessageSize: number;
  private readonly handlers: (Handler | undefined)[] = [];

  constructor(
    /** The device served by listen()/listenOn()/adopt(); devices can also come with addDevice(). */
    readonly device: VfioDevice | undefined,
    private readonly options: ServerOptions = {},
  ) {
    this.log = options.logger ?? defaultLogger();
    this.maxDataXferSize = options.maxDataXferSize ?? 1 << 20;
    this.maxMsgFds = options.maxMsgFds ?? 16;
    // The largest message: a data transfer plus its fixed fields, with room for
    // small fixed-size messages of every kind.
    this.maxMessageSize = HEADER_SIZE + 64 + Math.max(this.maxDataXferSize, 64 * 1024);
    this.primary = device ? new Endpoint(device, -1, undefined) : undefined;
    this.installHandlers();
  }

  /** Counters of the device given to the constructor. */
  get stats(): ServerStats {
    return this.requirePrimary().stats;
  }

  private requirePrimary(): Endpoint {
    if (!this.primary) throw new Error("this server was created without a device: use addDevice()");
    return this.primary;
  }

  /** Serves another device on its own socket path, from the same loop. */
  addDevice(device: VfioDevice, path: string): Endpoint {
    rmSync(path, { force: true });
    const e = new Endpoint(device, listenUnix(path), path);
    this.endpoints.push(e);
    this.pollDirty = true;
    return e;
  }

  /** Stops serving a device added with addDevice: its clients are disconnected. */
  removeDevice(endpoint: Endpoint): void {
    for (const s of this.sessions.filter((x) => x.endpoint === endpoint))
      this.closeSession(s, "device removed");
    const i = this.endpoints.indexOf(endpoint);
    if (i >= 0) this.endpoints.splice(i, 1);
    this.closeEndpoint(endpoint);
    this.pollDirty = true;
  }

  /** An eventfd that, once signalled, makes `run()` check `stop()` (usable from any thread). */
  get wakeFd(): number {
    return this.wake.fd;
  }

  get connectionCount(): number {
    return this.sessions.length;
  }

  /** Listens on a path for the constructor's device (a stale socket file there is replaced). */
  listen(path: string): this {
    rmSync(path, { force: true });
    return this.servePrimary(listenUnix(path), path);
  }

  /** Serves an already-listening socket (`--fd=N` in the backend conventions). */
  listenOn(fd: number): this {
    return this.servePrimary(fd, undefined);
  }

  private servePrimary(fd: number, path: string | undefined): this {
    const primary = this.requirePrimary();
    this.closeEndpoint(primary);
    primary.listenFd = fd;
    primary.path = path;
    if (!this.endpoints.includes(primary)) this.endpoints.unshift(primary);
    this.pollDirty = true;
    return this;
  }

  /** Serves one already-connected socket (e.g. a socketpair end) for the constructor's device. */
  adopt(fd: number): void {
    this.addSession(fd, this.requirePrimary());
  }

  /** Runs until stop(). */
  run(): void {
    let busy = false;
    while (!this.stopping) {
      this.runOnce(busy ? 0 : (this.options.idleTimeoutMs ?? (this.options.afterRound ? 1000 : -1)));
      busy = this.options.afterRound?.() ?? false;
      this.pumpAll();
    }
    this.shutdown();
  }

  /** Also watches `fd` for input from the same loop (e.g. a control channel); `onReadable` runs on this thread. */
  watch(fd: number, onReadable: () => void): void {
    this.watched.push({ fd, onReadable });
    this.pollDirty = true;
  }

  unwatch(fd: number): void {
    const i = this.watched.findIndex((w) => w.fd === fd);
    if (i >= 0) this.watched.splice(i, 1);
    this.pollDirty = true;
  }

  /** One poll round: waits up to timeoutMs, then handles whatever is ready. */
  runOnce(timeoutMs: number): void {
    if (this.pollDirty) this.rebuildPollSet();
    if (this.poller.wait(timeoutMs) === 0) return;
    const slots = this.slots;
    for (let i = 0; i < slots.length + 1; i++) {
      const revents = this.poller.revents(i);
      if (revents === 0) continue;
      if (i === 0) {
        this.wake.read();
        continue;
      }
      const slot = slots[i - 1]!;
      if (slot instanceof Endpoint) this.acceptAll(slot);
      else if (slot instanceof Session) {
        if (this.sessions.includes(slot)) this.serviceSession(slot, revents);
      } else if (this.watched.includes(slot)) slot.onReadable();
    }
  }

  /** Ends `run()` after the current round (call from the serving thread, or signal wakeFd). */
  stop(): void {
    this.stopping = true;
    this.wake.signal();
  }

  /** Closes every connection and the listening socket. */
  shutdown(): void {
    for (const s of this.sessions.slice()) this.closeSession(s, "server shutting down");
    for (const e of this.endpoints) this.closeEndpoint(e);
    this.endpoints.length = 0;
    this.poller.close();
    this.wake.close();
  }

  private closeEndpoint(e: Endpoint): void {
    if (e.listenFd < 0) return;
    closeFd(e.listenFd);
    e.listenFd = -1;
    if (e.path) rmSync(e.path, { force: true });
  }

  private rebuildPollSet(): void {
    this.slots = [...this.endpoints.filter((e) => e.listenFd >= 0), ...this.sessions, ...this.watched];
    const fds = [
      this.wake.fd,
      ...this.slots.map((x) =>
        x instanceof Endpoint ? x.listenFd : x instanceof Session ? x.conn.fd : x.fd,
      ),
    ];
    this.poller.setAll(fds, POLLIN);
    this.pollDirty = false;
  }

  private acceptAll(endpoint: Endpoint): void {
    for (;;) {
      const fd = acceptUnix(endpoint.listenFd);
      if (fd === null) return;
      if (this.sessions.length >= (this.options.maxConnections ?? 64)) {
        this.log.warn({ connections: this.sessions.length }, "too many clients; connection refused");
        closeFd(fd);
        continue;
      }
      this.addSession(fd, endpoint);
    }
  }

  private addSession(fd: number, endpoint: Endpoint): void {
    const timeout = this.options.timeoutMs ?? 5000;
    setSendTimeout(fd, timeout);
    setReceiveTimeout(fd, timeout);
    const conn = new Connection(fd, { maxMessageSize: this.maxMessageSize, maxFds: this.maxMsgFds });
    this.sessions.push(new Session(endpoint, conn, new RateLimitedLog(this.log)));
    endpoint.stats.connectionsAccepted++;
    this.pollDirty = true;
    this.log.debug({ fd }, "client connected");
  }

  private closeSession(s: Session, reason: string): void {
    const i = this.sessions.indexOf(s);
    if (i >= 0) this.sessions.splice(i, 1);
    this.pollDirty = true;
    for (const m of s.deferred) for (const fd of m.fds) closeFd(fd);
    s.deferred.length = 0;
    if (s.attached) {
      s.attached = false;
      try {
        s.device.detach?.(s);
      } catch (e) {
        this.log.error({ err: e }, "device detach failed");
      }
    }
    s.twin?.close();
    s.conn.close();
    this.log.info({ reason }, "client disconnected");
  }

  private serviceSession(s: Session, revents: number): void {
    try {
      const got = s.conn.fill(false);
      if (got === "eof") return this.closeSession(s, "end of stream");
      if (got === "empty" && revents & (POLLHUP | POLLERR)) return this.closeSession(s, "socket hung up");
      this.pump(s);
    } catch (e) {
      this.failSession(s, e);
    }
  }

  /** Handles every complete message a session has: set aside ones first, then buffered ones. */
  private pump(s: Session): void {
    let m: Message | null;
    do {
      while (s.deferred.length > 0) this.dispatch(s, s.deferred.shift()!);
      while ((m = s.conn.next()) !== null) {
        this.dispatch(s, m);
        while (s.deferred.length > 0) this.dispatch(s, s.deferred.shift()!);
      }
    } while (s.deferred.length > 0);
  }

  /**
   * Device work outside a request (afterRound) may have waited for a client's
   * reply and set that client's requests aside; answer them now, or the client
   * would wait for a reply that no poll round would ever produce.
   */
  private pumpAll(): void {
    for (const s of this.sessions.slice()) {
      if (s.deferred.length === 0) continue;
      try {
        this.pump(s);
      } catch (e) {
        this.failSession(s, e);
      }
    }
  }

  private failSession(s: Session, e: unknown): void {
    s.endpoint.stats.connectionsClosedOnError++;
    const reason = e instanceof ProtocolError ? `framing lost: ${e.message}` : `fatal: ${String(e)}`;
    this.log.warn({ err: e instanceof Error ? e.message : String(e) }, "closing connection");
    this.closeSession(s, reason);
  }

  /** Handles one message and sends its reply (unless the client asked for none). */
  private dispatch(s: Session, m: Message): void {
    const conn = s.conn;
    try {
      if ((m.flags & FLAG_TYPE_MASK) !== FLAG_TYPE_COMMAND) {
        if ((m.flags & FLAG_TYPE_MASK) === FLAG_TYPE_REPLY) {
          s.log.warn({ id: m.id, command: m.command }, "reply to nothing we sent; dropped");
          return;
        }
        throw invalid(`message type ${m.flags & FLAG_TYPE_MASK}`);
      }
      s.endpoint.stats.commands[m.command & 31]!++;
      if (m.oversized) throw new VfioUserError(Errno.E2BIG, `message of ${m.size} bytes`);
      if (!s.negotiated && m.command !== Command.VERSION)
        throw invalid(`${commandName(m.command)} before VERSION`);
      const handler = this.handlers[m.command];
      if (!handler) throw invalid(`unsupported command ${commandName(m.command)}`);
      s.replyFds.length = 0;
      const length = handler(s, m);
      if (!m.noReply) conn.send(m.id, m.command, FLAG_TYPE_REPLY, 0, length, s.replyFds);
      for (const fd of s.closeAfterReply) closeFd(fd);
      s.closeAfterReply.length = 0;
    } catch (e) {
      if (!(e instanceof VfioUserError)) {
        if (e instanceof ProtocolError) throw e;
        if (e instanceof SysError && !isDeviceError(e)) throw e;
      }
      const errno = e instanceof VfioUserError ? e.errno : e instanceof SysError ? e.errno : Errno.EIO;
      s.endpoint.stats.errorReplies++;
      s.endpoint.stats.errorsByErrno[Math.min(errno, 255)]!++;
      s.log.warn(
        { id: m.id, command: commandName(m.command), errno, err: e instanceof Error ? e.message : String(e) },
        "command failed",
      );
      for (const fd of s.closeAfterReply) closeFd(fd);
      s.closeAfterReply.length = 0;
      if (!m.noReply) conn.send(m.id, m.command, FLAG_TYPE_REPLY | FLAG_ERROR, errno, 0);
    } finally {
      conn.release(m);
    }
  }

  private installHandlers(): void {
    const h = this.handlers;
    h[Command.VERSION] = (s, m) => this.handleVersion(s, m);
    h[Command.DMA_MAP] = (s, m) => {
      const req = decodeDmaMap(m.reader());
      if (m.fds.length > 1) throw invalid("DMA_MAP carries at most one fd");
      const fd = m.fds.pop();
      try {
        s.device.dmaMap(req, fd);
      } catch (e) {
        if (fd !== undefined) closeFd(fd);
        throw e;
      }
      return 0;
    };
    h[Command.DMA_UNMAP] = (s, m) => {
      noFds(m);
      const req = decodeDmaUnmap(m.reader());
      const bitmap = s.device.dmaUnmap(req);
      const w = s.conn.payloadWriter();
      encodeDmaUnmap(w, req);
      if (req.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) {
        if (!bitmap || bitmap.length !== req.bitmap!.size)
          throw new VfioUserError(Errno.EINVAL, "no dirty bitmap");
        w.bytes(bitmap);
      }
      return w.length;
    };
    h[Command.DEVICE_GET_INFO] = (s, m) => {
      noFds(m);
      const r = m.reader();
      const argsz = r.u32("argsz");
      if (argsz < DEVICE_INFO_SIZE || m.payloadLength !== DEVICE_INFO_SIZE)
        throw invalid(`GET_INFO argsz ${argsz}`);
      const w = s.conn.payloadWriter();
      encodeDeviceInfo(w, DEVICE_INFO_SIZE, s.device.deviceInfo());
      return w.length;
    };
    h[Command.DEVICE_GET_REGION_INFO] = (s, m) => {
      noFds(m);
      const { argsz, index } = decodeRegionInfoRequest(m.reader());
      const info = s.device.regionInfo(index);
      const w = s.conn.payloadWriter();
      encodeRegionInfo(w, argsz, info);
      // The fd goes with a reply that is complete (caps included), as QEMU expects.
      if (info.flags & REGION_INFO_FLAG_MMAP && info.fd !== undefined && argsz >= regionInfoFullSize(info))
        s.replyFds.push(info.fd);
      return w.length;
    };
    h[Command.DEVICE_GET_REGION_IO_FDS] = (s, m) => {
      noFds(m);
      const { argsz, index } = decodeIoFdsRequest(m.reader());
      if (!s.device.regionIoFds) throw invalid("device offers no I/O fds");
      const { subRegions, fds } = s.device.regionIoFds(index);
      if (fds.length > s.peer.maxMsgFds)
        throw new VfioUserError(Errno.E2BIG, "more I/O fds than the client takes");
      const w = s.conn.payloadWriter();
      encodeIoFds(w, argsz, index, subRegions);
      if (argsz >= w.length) s.replyFds.push(...fds);
      return w.length;
    };
    h[Command.DEVICE_GET_IRQ_INFO] = (s, m) => {
      noFds(m);
      const { index } = decodeIrqInfoRequest(m.reader());
      if (m.payloadLength !== 16) throw invalid("GET_IRQ_INFO payload size");
      const w = s.conn.payloadWriter();
      encodeIrqInfo(w, s.device.irqInfo(index));
      return w.length;
    };
    h[Command.DEVICE_SET_IRQS] = (s, m) => {
      const req = decodeSetIrqs(m.reader(), m.fds.length);
      const fds = m.fds.splice(0);
      try {
        s.device.setIrqs(req, fds);
      } catch (e) {
        for (const fd of fds) closeFd(fd);
        throw e;
      }
      return 0;
    };
    h[Command.REGION_READ] = (s, m) => {
      noFds(m);
      const v = m.view;
      const p = m.payloadOffset;
      if (m.payloadLength !== REGION_ACCESS_SIZE) throw invalid("REGION_READ payload size");
      const offset = u64AsNumber(v, p);
      const region = v.getUint32(p + 8, true);
      const count = v.getUint32(p + 12, true);
      if (count === 0 || count > this.maxDataXferSize) throw invalid(`REGION_READ count ${count}`);
      s.endpoint.stats.regionReads[region & 15]!++;
      const out = s.conn.channel.sendBuffer;
      const at = HEADER_SIZE + REGION_ACCESS_SIZE;
      s.device.regionRead(region, offset, count, out, at);
      const sv = s.conn.sendView;
      sv.setUint32(HEADER_SIZE, offset % 0x100000000, true);
      sv.setUint32(HEADER_SIZE + 4, Math.floor(offset / 0x100000000), true);
      sv.setUint32(HEADER_SIZE + 8, region, true);
      sv.setUint32(HEADER_SIZE + 12, count, true);
      return REGION_ACCESS_SIZE + count;
    };
    h[Command.REGION_WRITE] = (s, m) => {
      noFds(m);
      const v = m.view;
      const p = m.payloadOffset;
      if (m.payloadLength < REGION_ACCESS_SIZE) throw invalid("REGION_WRITE payload size");
      const offset = u64AsNumber(v, p);
      const region = v.getUint32(p + 8, true);
      const count = v.getUint32(p + 12, true);
      if (count === 0 || count > this.maxDataXferSize || count !== m.payloadLength - REGION_ACCESS_SIZE)
        throw invalid(`REGION_WRITE count ${count}`);
      s.endpoint.stats.regionWrites[region & 15]!++;
      const data = s.conn.channel.recvBuffer;
      s.device.regionWrite(region, offset, count, data, p + REGION_ACCESS_SIZE);
      // Reply: the request's offset/region/count, copied as they came.
      s.conn.sendPayload.set(data.subarray(p, p + REGION_ACCESS_SIZE));
      return REGION_ACCESS_SIZE;
    };
    h[Command.REGION_WRITE_MULTI] = (s, m) => {
      noFds(m);
      if (!this.options.writeMultiple || !s.peer.writeMultiple)
        throw invalid("REGION_WRITE_MULTI not negotiated");
      const writes = decodeWriteMulti(m.reader());
      const buf = s.conn.channel.recvBuffer;
      for (let i = 0; i < writes.length; i++) {
        const wr = writes[i]!;
        s.endpoint.stats.regionWrites[wr.region & 15]!++;
        s.device.regionWrite(wr.region, wr.offset, wr.count, buf, m.payloadOffset + 8 + i * 24 + 16);
      }
      const w = s.conn.payloadWriter();
      w.u64(writes.length);
      return w.length;
    };
    h[Command.DEVICE_RESET] = (s, m) => {
      noFds(m);
      if (m.payloadLength !== 0) throw invalid("DEVICE_RESET has no payload");
      s.device.reset();
      return 0;
    };
    h[Command.DEVICE_FEATURE] = (s, m) => {
      noFds(m);
      const req = decodeFeature(m.reader());
      if (!s.device.feature) throw new VfioUserError(Errno.ENOTTY, "device has no features");
      const result = s.device.feature(req.flags, req.data, req.argsz);
      const w = s.conn.payloadWriter();
      const data = result.data ?? req.data;
      if (FEATURE_HEADER_SIZE + data.length > req.argsz)
        throw new VfioUserError(Errno.EINVAL, "feature data larger than argsz");
      w.u32(FEATURE_HEADER_SIZE + data.length)
        .u32(req.flags)
        .bytes(data);
      return w.length;
    };
    h[Command.MIG_DATA_READ] = (s, m) => {
      noFds(m);
      const r = m.reader();
      const argsz = r.u32("argsz");
      const size = r.u32("size");
      if (m.payloadLength !== MIG_DATA_HEADER_SIZE) throw invalid("MIG_DATA_READ payload size");
      if (size > this.maxDataXferSize || argsz < MIG_DATA_HEADER_SIZE + size)
        throw invalid(`MIG_DATA_READ size ${size}`);
      if (!s.device.migrationRead) throw invalid("device does not migrate");
      const data = s.device.migrationRead(size);
      const w = s.conn.payloadWriter();
      w.u32(MIG_DATA_HEADER_SIZE + data.length)
        .u32(data.length)
        .bytes(data);
      return w.length;
    };
    h[Command.MIG_DATA_WRITE] = (s, m) => {
      noFds(m);
      const r = m.reader();
      r.u32("argsz");
      const size = r.u32("size");
      if (size !== r.remaining || size > this.maxDataXferSize) throw invalid(`MIG_DATA_WRITE size ${size}`);
      if (!s.device.migrationWrite) throw invalid("device does not migrate");
      s.device.migrationWrite(r.bytes(size, "data"));
      return 0;
    };
    // DMA_READ / DMA_WRITE flow server → client; as commands from a client they are invalid.
  }

  private handleVersion(s: Session, m: Message): number {
    noFds(m);
    if (s.negotiated) throw invalid("VERSION after negotiation");
    const v = decodeVersion(m.reader());
    if (v.major !== VERSION_MAJOR) throw new VfioUserError(Errno.ENOTSUP, `major version ${v.major}`);
    const peer = parseCapabilities(v.json);
    const wantTwin = peer.twinSocket.supported && this.options.twinSocket === true;
    const ours: Capabilities = {
      maxMsgFds: this.maxMsgFds,
      maxDataXferSize: this.maxDataXferSize,
      maxDmaMaps: defaultCapabilities.maxDmaMaps,
      pgsizes: peer.pgsizes & 4096 ? 4096 : peer.pgsizes,
      writeMultiple: peer.writeMultiple && this.options.writeMultiple === true,
      twinSocket: wantTwin ? { supported: true, fdIndex: 0 } : { supported: false },
      ...(peer.migration ? { migration: peer.migration } : {}),
    };
    if (!(peer.pgsizes & 4096)) throw new VfioUserError(Errno.ENOTSUP, "client does not support 4 KiB pages");
    const w = s.conn.payloadWriter();
    encodeVersion(w, {
      major: VERSION_MAJOR,
      minor: Math.min(v.minor, VERSION_MINOR),
      json: serializeCapabilities(ours),
    });
    if (wantTwin) {
      const [mine, theirs] = socketPair();
      const timeout = this.options.timeoutMs ?? 5000;
      setSendTimeout(mine, timeout);
      setReceiveTimeout(mine, timeout);
      s.twin = new Connection(mine, { maxMessageSize: this.maxMessageSize, maxFds: 0 });
      s.replyFds.push(theirs);
      s.closeAfterReply.push(theirs);
    }
    s.peer = peer;
    s.negotiated = true;
    s.attached = true;
    s.device.attach?.(s);
    return w.length;
  }
}

/** Errors a device may raise from libc that mean "this request failed", not "the socket failed". */
function isDeviceError(e: SysError): boolean {
  return !["sendmsg", "recvmsg"].includes(e.syscall);
}

function noFds(m: Message): void {
  if (m.fds.length > 0) throw invalid(`${commandName(m.command)} carries no fds`);
}

/** A u64 offset read without a BigInt; offsets past 2^53 are refused. */
function u64AsNumber(v: DataView, at: number): number {
  const lo = v.getUint32(at, true);
  const hi = v.getUint32(at + 4, true);
  if (hi > 0x1fffff) throw invalid("offset too large");
  return hi * 0x100000000 + lo;
}
