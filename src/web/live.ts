/**
 * Live displays over a WebSocket (/api/v1/live). A client subscribes to a vGPU
 * at a scale (1: every pixel; 4: every fourth pixel of every fourth line, for
 * thumbnails) and a frame rate; the worker scans each subscribed display out
 * of its mapping at that rate, and sends a frame only when its pixels changed.
 * Frames are RGBA, deflated (the browser inflates them with DecompressionStream).
 *
 * Two caps keep the daemon's machine first: a rate per subscription (≤ 30/s),
 * and a CPU budget for all of it (ms of scan-out and encoding per second); a
 * display that would overrun it is looked at later, and a client whose socket
 * is backed up is skipped until it drains (it then gets the newest frame).
 *
 * Binary frame: u8 kind (1), u8 encoding (1 = zlib RGBA), u16 scale,
 * u16 width, u16 height, u32 seq, 36 bytes of UUID; then the payload.
 * Text messages are JSON: {type:"state", ...} once a second and after changes.
 */
import { deflateSync } from "node:zlib";
import type { WebSocket } from "ws";
import type { FrameReader } from "./frames.js";
import type { DaemonLink } from "./link.js";
import type { DaemonSnapshot, DisplayState } from "./protocol.js";

export const FRAME_HEADER = 48;
const MAX_FPS = 30;
const MAX_SUBSCRIPTIONS = 64;
/** A client with more than this queued gets no new frames until it drains. */
const BACKLOG_BYTES = 4 << 20;

class Feed {
  rgba: Uint8Array | undefined;
  scratch: Uint8Array | undefined;
  width = 0;
  height = 0;
  seq = 0;
  message: Buffer | undefined;
  lastCheck = 0;
  /** Which eighth of the lines the next quick look compares. */
  phase = 0;
  /** A copy of the visible lines as last scanned (full-size feeds), and the layout it is for. */
  raw: Uint8Array | undefined;
  rawKey = "";
  readonly subscribers = new Set<Subscription>();

  constructor(
    readonly uuid: string,
    readonly scale: number,
  ) {}

  get fps(): number {
    let fps = 1;
    for (const s of this.subscribers) fps = Math.max(fps, s.fps);
    return fps;
  }
}

interface Subscription {
  readonly client: LiveClient;
  readonly feed: Feed;
  readonly fps: number;
  sentSeq: number;
  lastSent: number;
}

interface LiveClient {
  readonly ws: WebSocket;
  readonly subscriptions: Map<string, Subscription>;
}

export interface LiveStats {
  framesSent: number;
  bytesSent: number;
  scanMs: number;
  skippedForBudget: number;
}

export class LiveFrames {
  private readonly clients = new Set<LiveClient>();
  private readonly feeds = new Map<string, Feed>();
  private timer: NodeJS.Timeout | undefined;
  private tokens: number;
  private lastTick = performance.now();
  private ticking = false;
  readonly stats: LiveStats = { framesSent: 0, bytesSent: 0, scanMs: 0, skippedForBudget: 0 };

  constructor(
    private readonly link: DaemonLink,
    private readonly reader: FrameReader,
    /** Scan-out and encoding time allowed per second, all feeds together (ms). */
    private readonly budgetMs: number,
    private readonly describe: (s: DaemonSnapshot) => unknown,
  ) {
    this.tokens = budgetMs;
  }

  /** A new WebSocket client. */
  attach(ws: WebSocket): void {
    const client: LiveClient = { ws, subscriptions: new Map() };
    this.clients.add(client);
    ws.on("message", (data, isBinary) => this.command(client, isBinary ? "" : data.toString()));
    ws.on("close", () => {
      for (const s of client.subscriptions.values()) this.drop(s);
      this.clients.delete(client);
    });
  }

  /** Pushes the daemon's state to every client. */
  broadcast(s: DaemonSnapshot): void {
    if (this.clients.size === 0) return;
    const text = JSON.stringify({ type: "state", time: Date.now(), ...(this.describe(s) as object) });
    for (const c of this.clients) if (c.ws.readyState === c.ws.OPEN) c.ws.send(text);
  }

  private refuse(client: LiveClient, error: string): void {
    client.ws.send(JSON.stringify({ type: "error", error, code: "EINVAL" }));
  }

  private command(client: LiveClient, text: string): void {
    let m: { subscribe?: unknown; unsubscribe?: unknown; scale?: unknown; fps?: unknown };
    try {
      m = JSON.parse(text) as typeof m;
      if (typeof m !== "object" || m === null) throw new Error();
    } catch {
      return this.refuse(client, "a live request is a JSON object");
    }
    if (typeof m.unsubscribe === "string") {
      const s = client.subscriptions.get(m.unsubscribe);
      if (s) this.drop(s);
      client.subscriptions.delete(m.unsubscribe);
      return;
    }
    const uuid = m.subscribe;
    const scale = m.scale ?? 1;
    const fps = m.fps ?? 10;
    if (typeof uuid !== "string" || !/^[0-9a-f-]{36}$/.test(uuid))
      return this.refuse(client, "subscribe needs a vGPU UUID");
    if (!Number.isInteger(scale) || (scale as number) < 1 || (scale as number) > 16)
      return this.refuse(client, "scale must be an integer 1..16");
    if (typeof fps !== "number" || !(fps > 0) || fps > MAX_FPS)
      return this.refuse(client, `fps must be in (0, ${MAX_FPS}]`);
    const old = client.subscriptions.get(uuid);
    if (old) this.drop(old);
    else if (client.subscriptions.size >= MAX_SUBSCRIPTIONS)
      return this.refuse(client, `at most ${MAX_SUBSCRIPTIONS} subscriptions`);
    const key = `${uuid}/${scale}`;
    let feed = this.feeds.get(key);
    if (!feed) this.feeds.set(key, (feed = new Feed(uuid, scale as number)));
    const s: Subscription = { client, feed, fps, sentSeq: 0, lastSent: 0 };
    feed.subscribers.add(s);
    feed.lastCheck = 0; // look now: the newcomer needs a first frame
    client.subscriptions.set(uuid, s);
    this.schedule();
  }

  private drop(s: Subscription): void {
    s.feed.subscribers.delete(s);
    if (s.feed.subscribers.size === 0) this.feeds.delete(`${s.feed.uuid}/${s.feed.scale}`);
  }

  private schedule(): void {
    if (this.timer || this.feeds.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.tick().finally(() => this.schedule());
    }, 1000 / MAX_FPS);
  }

  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      const now = performance.now();
      this.tokens = Math.min(this.budgetMs, this.tokens + ((now - this.lastTick) * this.budgetMs) / 1000);
      this.lastTick = now;
      const due = [...this.feeds.values()].filter((f) => now - f.lastCheck >= 1000 / f.fps - 5);
      if (due.length > 0) {
        const displays = new Map((await this.link.displays()).map((d) => [d.uuid, d]));
        // The longest-waiting display first, so a tight budget still goes round.
        due.sort((a, b) => a.lastCheck - b.lastCheck);
        for (const f of due) {
          if (this.tokens <= 0) {
            this.stats.skippedForBudget++;
            continue;
          }
          f.lastCheck = now;
          const d = displays.get(f.uuid);
          if (d) this.look(f, d);
        }
      }
      this.send(performance.now());
    } finally {
      this.ticking = false;
    }
  }

  /**
   * Scans one display out; if it changed, encodes the frame once for every
   * subscriber. A full-size display is first compared in memory with a copy
   * of its lines, one line in eight (another eighth each time, as x11vnc polls
   * scanlines): a still screen costs a memcmp of an eighth of it, and a change
   * shows within eight looks at worst.
   */
  private look(f: Feed, d: DisplayState): void {
    const t0 = performance.now();
    const lines = f.scale === 1 ? this.reader.visibleLines(d) : undefined;
    if (lines && f.rgba && f.raw && f.rawKey === lines.key) {
      const phase = f.phase;
      f.phase = (f.phase + 1) % 8;
      let same = true;
      for (let y = phase; y < lines.height && same; y += 8)
        same =
          Buffer.compare(lines.line(y), f.raw.subarray(y * lines.lineBytes, (y + 1) * lines.lineBytes)) === 0;
      if (same) {
        const spent = performance.now() - t0;
        this.tokens -= spent;
        this.stats.scanMs += spent;
        return;
      }
    }
    if (lines) {
      // The copy first: if the guest draws during the scan-out, the frame is the newer, and the next look sees it.
      const size = lines.height * lines.lineBytes;
      if (f.raw?.length !== size) f.raw = new Uint8Array(size);
      for (let y = 0; y < lines.height; y++) f.raw.set(lines.line(y), y * lines.lineBytes);
      f.rawKey = lines.key;
    }
    const frame = this.reader.read(d, f.scale, f.scratch);
    const changed =
      !f.rgba ||
      frame.width !== f.width ||
      frame.height !== f.height ||
      !Buffer.from(frame.rgba.buffer, frame.rgba.byteOffset, frame.rgba.byteLength).equals(f.rgba);
    if (changed) {
      f.scratch = f.rgba;
      f.rgba = frame.rgba;
      f.width = frame.width;
      f.height = frame.height;
      f.seq++;
      const payload = deflateSync(frame.rgba, { level: 1 });
      const m = Buffer.allocUnsafe(FRAME_HEADER + payload.length);
      m.writeUInt8(1, 0);
      m.writeUInt8(1, 1);
      m.writeUInt16LE(f.scale, 2);
      m.writeUInt16LE(f.width, 4);
      m.writeUInt16LE(f.height, 6);
      m.writeUInt32LE(f.seq, 8);
      m.write(f.uuid.padEnd(36), 12, 36, "latin1");
      payload.copy(m, FRAME_HEADER);
      f.message = m;
    } else f.scratch = frame.rgba;
    const spent = performance.now() - t0;
    this.tokens -= spent;
    this.stats.scanMs += spent;
  }

  private send(now: number): void {
    for (const f of this.feeds.values()) {
      if (!f.message) continue;
      for (const s of f.subscribers) {
        if (s.sentSeq === f.seq || now - s.lastSent < 1000 / s.fps - 5) continue;
        const ws = s.client.ws;
        if (ws.readyState !== ws.OPEN || ws.bufferedAmount > BACKLOG_BYTES) continue;
        ws.send(f.message, { binary: true });
        s.sentSeq = f.seq;
        s.lastSent = now;
        this.stats.framesSent++;
        this.stats.bytesSent += f.message.length;
      }
    }
  }
}
