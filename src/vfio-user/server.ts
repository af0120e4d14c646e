/**
 * The device side of vfio-user: the serving loop. A Server listens on one UNIX
 * socket per device (an Endpoint), accepts clients into Sessions, and hands
 * every complete message to `dispatch` (the command table, dispatch.ts).
 *
 * Threading: `run()` is a blocking loop (poll → recvmsg → handler → sendmsg) on
 * the thread that calls it, with no event-loop hop between a trapped access and
 * its reply. Run it in a worker thread or its own process; `stop()` or a signal
 * on `wakeFd` from any thread ends it.
 */
import { openSync, rmSync } from "node:fs";
import { type Logger, RateLimitedLog, defaultLogger } from "../base/index.js";
import {
  EventFd,
  POLLERR,
  POLLHUP,
  POLLIN,
  Poller,
  acceptUnix,
  closeFd,
  listenUnix,
  POLLOUT,
  SysError,
} from "../sys/index.js";
import { Connection, type Message } from "./connection.js";
import { HEADER_SIZE } from "./constants.js";
import type { VfioDevice } from "./device.js";
import { dispatch } from "./dispatch.js";
import { Endpoint, type ServerStats } from "./endpoint.js";
import { Errno, ProtocolError, UsageError } from "./errors.js";
import { Session, type SessionLimits } from "./session.js";

export { Endpoint, ServerStats } from "./endpoint.js";

export interface ServerOptions {
  /** Most data accepted in one read/write message (advertised as max_data_xfer_size). */
  readonly maxDataXferSize?: number;
  /** Most fds accepted in one message (advertised as max_msg_fds). */
  readonly maxMsgFds?: number;
  /** Offer twin-socket mode to clients that support it. */
  readonly twinSocket?: boolean;
  /** Accept REGION_WRITE_MULTI from clients that offer it. */
  readonly writeMultiple?: boolean;
  /** How long to wait for a client's reply to DMA_READ/DMA_WRITE. */
  readonly timeoutMs?: number;
  /**
   * Sends never block: reply bytes a client has not taken wait in a queue of at
   * most this size (default twice the largest message); a client whose queue
   * would pass it has stopped reading and is disconnected.
   */
  readonly maxQueuedOutput?: number;
  /** Most clients connected at once, over all devices; further ones are closed at once (default 256). */
  readonly maxConnections?: number;
  /**
   * Most connections to one device (owner, observers and ones negotiating),
   * so one vGPU's idle connections cannot use up another's (default 8).
   */
  readonly maxConnectionsPerDevice?: number;
  /** A connection that has not finished VERSION after this long is closed (default 5000 ms). */
  readonly negotiationTimeoutMs?: number;
  /** Most DMA mappings one client may hold; more get ENOSPC (advertised as max_dma_maps; default 4096). */
  readonly maxDmaMappings?: number;
  /** Most fds the device may hold for one client (eventfds, DMA); a message past it gets EMFILE (default 1024). */
  readonly maxClientFds?: number;
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

interface Watched {
  readonly fd: number;
  readonly onReadable: () => void;
}

/** A session's twin socket in the poll set (replies to our requests arrive there). */
class TwinSlot {
  constructor(readonly session: Session) {}
}

export class Server {
  private readonly wake = new EventFd(undefined, { nonBlocking: true });
  private readonly poller = new Poller(8);
  private readonly sessions: Session[] = [];
  private readonly endpoints: Endpoint[] = [];
  private readonly primary: Endpoint | undefined;
  /** What each poll slot after the wake fd stands for. */
  private slots: (Endpoint | Session | TwinSlot | Watched)[] = [];
  private readonly watched: Watched[] = [];
  private pollDirty = true;
  private stopping = false;
  private readonly log: Logger;
  private readonly limits: SessionLimits;
  private readonly negotiationTimeoutMs: number;
  /** Held so that, out of fds, a connection can still be accepted in order to refuse it. */
  private reserveFd = openReserveFd();
  private readonly refusals: RateLimitedLog;

  constructor(
    /** The device served by listen()/listenOn()/adopt(); devices can also come with addDevice(). */
    readonly device: VfioDevice | undefined,
    private readonly options: ServerOptions = {},
  ) {
    this.log = options.logger ?? defaultLogger();
    this.refusals = new RateLimitedLog(this.log);
    const maxDataXferSize = options.maxDataXferSize ?? 1 << 20;
    // The largest message: a data transfer plus its fixed fields, with room for
    // small fixed-size messages of every kind.
    const maxMessageSize = HEADER_SIZE + 64 + Math.max(maxDataXferSize, 64 * 1024);
    this.limits = {
      maxDataXferSize,
      maxMsgFds: options.maxMsgFds ?? 16,
      maxMessageSize,
      queueLimit: Math.max(options.maxQueuedOutput ?? 2 * maxMessageSize, maxMessageSize),
      writeMultiple: options.writeMultiple === true,
      twinSocket: options.twinSocket === true,
      timeoutMs: options.timeoutMs ?? 5000,
      maxDmaMappings: options.maxDmaMappings ?? 4096,
      maxClientFds: options.maxClientFds ?? 1024,
    };
    this.negotiationTimeoutMs = options.negotiationTimeoutMs ?? 5000;
    this.primary = device ? this.withReaper(new Endpoint(device, -1, undefined)) : undefined;
  }

  /** Counters of the device given to the constructor. */
  get stats(): ServerStats {
    return this.requirePrimary().stats;
  }

  private requirePrimary(): Endpoint {
    if (!this.primary) throw new UsageError("this server was created without a device: use addDevice()");
    return this.primary;
  }

  /** Serves another device on its own socket path, from the same loop. */
  addDevice(device: VfioDevice, path: string): Endpoint {
    rmSync(path, { force: true });
    const e = this.withReaper(new Endpoint(device, listenUnix(path), path));
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
    while (!this.stopping) busy = this.round(busy ? 0 : this.idleTimeoutMs);
    this.shutdown();
  }

  /** How long an idle round of run() sleeps in poll (ms; -1: until something happens). */
  get idleTimeoutMs(): number {
    return this.options.idleTimeoutMs ?? (this.options.afterRound ? 1000 : -1);
  }

  /** True once stop() was called. */
  get stopped(): boolean {
    return this.stopping;
  }

  /**
   * One round of run(): poll up to timeoutMs, handle what is ready, run
   * afterRound, answer requests it set aside. Returns true if more work is
   * waiting (poll the next round with 0). For callers that drive the loop
   * themselves, e.g. to return to Node's event loop between rounds.
   */
  round(timeoutMs: number): boolean {
    this.runOnce(timeoutMs);
    const busy = this.options.afterRound?.() ?? false;
    this.pumpAll();
    return busy;
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
    const ready = this.poller.wait(this.boundByDeadlines(this.boundByNegotiation(timeoutMs)));
    if (this.negotiating > 0) this.closeSlowNegotiations();
    this.expireDma();
    if (ready === 0) return;
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
      } else if (slot instanceof TwinSlot) {
        if (this.sessions.includes(slot.session)) this.serviceTwin(slot, revents);
      } else if (this.watched.includes(slot)) slot.onReadable();
    }
  }

  /**
   * True if something is waiting to be read (a client's message, a new
   * connection): device work done between rounds (afterRound) checks it to
   * stop early, so a long stretch of work never holds a waiting trap.
   */
  inputPending(): boolean {
    if (this.pollDirty) this.rebuildPollSet();
    return this.poller.wait(0) > 0;
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
    if (this.reserveFd >= 0) closeFd(this.reserveFd);
    this.reserveFd = -1;
  }

  private closeEndpoint(e: Endpoint): void {
    if (e.listenFd < 0) return;
    closeFd(e.listenFd);
    e.listenFd = -1;
    if (e.path) rmSync(e.path, { force: true });
  }

  private rebuildPollSet(): void {
    this.slots = [
      ...this.endpoints.filter((e) => e.listenFd >= 0),
      ...this.sessions,
      ...this.sessions.filter((s) => s.twin).map((s) => new TwinSlot(s)),
      ...this.watched,
    ];
    this.poller.setAll([this.wake.fd], POLLIN);
    this.slots.forEach((x, i) => {
      if (x instanceof Endpoint) this.poller.set(i + 1, x.listenFd, POLLIN);
      else if (x instanceof Session)
        this.poller.set(i + 1, x.conn.fd, POLLIN | (x.writeWanted ? POLLOUT : 0));
      else if (x instanceof TwinSlot) {
        x.session.twinPolled = true;
        this.poller.set(i + 1, x.session.twin!.fd, POLLIN | (x.session.twinWriteWanted ? POLLOUT : 0));
      } else this.poller.set(i + 1, x.fd, POLLIN);
    });
    this.pollDirty = false;
  }

  private acceptAll(endpoint: Endpoint): void {
    for (;;) {
      let fd: number | null;
      try {
        fd = acceptUnix(endpoint.listenFd);
      } catch (e) {
        if (e instanceof SysError && (e.errno === Errno.EMFILE || e.errno === Errno.ENFILE))
          return this.refuseForLackOfFds(endpoint, e);
        throw e;
      }
      if (fd === null) return;
      const refusal =
        this.sessions.length >= (this.options.maxConnections ?? 256)
          ? "too many clients"
          : endpoint.connections >= (this.options.maxConnectionsPerDevice ?? 8)
            ? "too many clients of this device"
            : undefined;
      if (refusal) {
        endpoint.stats.connectionsRefused++;
        this.refusals.warn(
          { device: endpoint.path, connections: endpoint.connections },
          `${refusal}; connection refused`,
        );
        closeFd(fd);
        continue;
      }
      this.addSession(fd, endpoint);
    }
  }

  /**
   * accept4 failed with EMFILE/ENFILE: the connection waits in the backlog and
   * would wake every poll. Give back the reserve fd, accept it with that and
   * close it at once (the client sees its connection end), then take the
   * reserve again: that client is refused, the daemon goes on.
   */
  private refuseForLackOfFds(endpoint: Endpoint, e: SysError): void {
    endpoint.stats.connectionsRefused++;
    this.refusals.warn(
      { device: endpoint.path, err: e.message },
      "out of file descriptors; connection refused",
    );
    if (this.reserveFd >= 0) {
      closeFd(this.reserveFd);
      this.reserveFd = -1;
    }
    try {
      const fd = acceptUnix(endpoint.listenFd);
      if (fd !== null) closeFd(fd);
    } catch {
      // Still none: the connection stays queued until fds free up.
    }
    this.reserveFd = openReserveFd();
  }

  /** Fails overdue asynchronous DMA requests (that session's device hears ETIMEDOUT). */
  private expireDma(): void {
    const now = performance.now();
    for (const s of this.sessions)
      if (s.pending.size > 0) {
        s.expirePending(now);
        this.watchOutput(s);
      }
  }

  /** Waits no longer than the first asynchronous DMA deadline. */
  private boundByDeadlines(timeoutMs: number): number {
    let first = Infinity;
    for (const s of this.sessions)
      if (s.pending.size > 0) for (const p of s.pending.values()) first = Math.min(first, p.deadline);
    if (first === Infinity) return timeoutMs;
    const left = Math.max(0, Math.ceil(first - performance.now()));
    return timeoutMs < 0 ? left : Math.min(timeoutMs, left);
  }

  /** Replies on a twin socket: our asynchronous DMA requests go there in twin mode. */
  private serviceTwin(slot: TwinSlot, revents: number): void {
    const s = slot.session;
    const twin = s.twin!;
    try {
      if (revents & POLLOUT) twin.flush();
      if (!(revents & (POLLIN | POLLHUP | POLLERR))) return this.watchOutput(s);
      if (twin.fill(false) === "eof") return this.closeSession(s, "twin socket closed");
      let m: Message | null;
      while ((m = twin.next()) !== null) {
        if (!(m.isReply && s.completeReply(m)))
          s.log.warn({ id: m.id, command: m.command }, "unexpected message on the twin socket; dropped");
        twin.release(m);
      }
      this.watchOutput(s);
    } catch (e) {
      this.failSession(s, e);
    }
  }

  /** Waits no longer than the first negotiation deadline. */
  private boundByNegotiation(timeoutMs: number): number {
    if (this.negotiating === 0) return timeoutMs;
    let first = Infinity;
    for (const s of this.sessions) if (!s.negotiated) first = Math.min(first, s.acceptedAt);
    const left = Math.max(0, Math.ceil(first + this.negotiationTimeoutMs - performance.now()));
    return timeoutMs < 0 ? left : Math.min(timeoutMs, left);
  }

  private closeSlowNegotiations(): void {
    const now = performance.now();
    for (const s of this.sessions.slice())
      if (!s.negotiated && now - s.acceptedAt >= this.negotiationTimeoutMs) {
        s.endpoint.stats.negotiationTimeouts++;
        this.closeSession(s, `no VERSION within ${this.negotiationTimeoutMs} ms`);
      }
  }

  /** Connections that have not finished VERSION yet. */
  private get negotiating(): number {
    let n = 0;
    for (const s of this.sessions) if (!s.negotiated) n++;
    return n;
  }

  private addSession(fd: number, endpoint: Endpoint): void {
    const conn = new Connection(fd, {
      maxMessageSize: this.limits.maxMessageSize,
      maxFds: this.limits.maxMsgFds,
      queueLimit: this.limits.queueLimit,
    });
    this.sessions.push(new Session(endpoint, conn, new RateLimitedLog(this.log), this.limits));
    endpoint.stats.connectionsAccepted++;
    endpoint.connections++;
    this.pollDirty = true;
    this.log.debug({ fd }, "client connected");
  }

  private withReaper(e: Endpoint): Endpoint {
    e.reapOwnerIfGone = () => {
      const owner = this.sessions.find((s) => s.endpoint === e && s === e.owner);
      if (owner?.conn.peerHungUp()) this.closeSession(owner, "peer hung up");
    };
    return e;
  }

  private closeSession(s: Session, reason: string): void {
    const i = this.sessions.indexOf(s);
    if (i >= 0) this.sessions.splice(i, 1);
    this.pollDirty = true;
    for (const m of s.deferred) for (const fd of m.fds) closeFd(fd);
    s.deferred.length = 0;
    s.failPending();
    if (s.attached) {
      s.attached = false;
      try {
        s.device.detach?.(s);
      } catch (e) {
        this.log.error({ err: e }, "device detach failed");
      }
    }
    const endpoint = s.endpoint;
    endpoint.connections--;
    if (endpoint.owner === s) endpoint.owner = undefined;
    if (s.role === "observer") endpoint.observers--;
    s.twin?.close();
    s.conn.close();
    this.log.info({ reason }, "client disconnected");
  }

  private serviceSession(s: Session, revents: number): void {
    try {
      if (revents & POLLOUT) s.conn.flush();
      if (revents & (POLLIN | POLLHUP | POLLERR)) {
        const got = s.conn.fill(false);
        if (got === "eof") return this.closeSession(s, "end of stream");
        if (got === "empty" && revents & (POLLHUP | POLLERR)) return this.closeSession(s, "socket hung up");
        this.pump(s);
      }
      this.watchOutput(s);
    } catch (e) {
      this.failSession(s, e);
    }
  }

  /** Polls a session for writability exactly while it has queued output. */
  private watchOutput(s: Session): void {
    const want = s.conn.queued > 0;
    const twinWant = (s.twin?.queued ?? 0) > 0;
    if (s.twin && !s.twinPolled) this.pollDirty = true; // negotiated twin mode: poll the twin too
    if (want === s.writeWanted && twinWant === s.twinWriteWanted) return;
    s.writeWanted = want;
    s.twinWriteWanted = twinWant;
    this.pollDirty = true;
  }

  /** Handles every complete message a session has: set aside ones first, then buffered ones. */
  private pump(s: Session): void {
    let m: Message | null;
    do {
      drainDeferred(s);
      while ((m = s.conn.next()) !== null) {
        dispatch(s, m);
        drainDeferred(s);
      }
    } while (s.deferred.length > 0);
  }

  /**
   * Device work outside a request (afterRound) may have waited for a client's
   * reply and set that client's requests aside, or left complete requests in
   * the connection's buffer (read together with the reply it waited for);
   * answer them now, or the client would wait for a reply that no poll round
   * would ever produce (its socket has nothing more to read).
   */
  private pumpAll(): void {
    for (const s of this.sessions.slice()) {
      try {
        this.pump(s);
        this.watchOutput(s);
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
}

/** Handles the requests set aside while a DMA reply was awaited. */
function drainDeferred(s: Session): void {
  while (s.deferred.length > 0) dispatch(s, s.deferred.shift()!);
  s.deferredBytes = 0;
}

/** An fd kept in reserve (on /dev/null), or -1 if even that cannot be had. */
function openReserveFd(): number {
  try {
    return openSync("/dev/null", "r");
  } catch {
    return -1;
  }
}
