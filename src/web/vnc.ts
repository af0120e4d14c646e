/**
 * VNC consoles: each running vGPU's display on its own TCP port, for any
 * standard viewer (QEMU's own display cannot show a vfio-user device's
 * framebuffer). RFB 3.8 (3.3 and 3.7 viewers too), security "None", raw and
 * zlib encodings, DesktopSize when the guest changes mode; keyboard, pointer
 * and clipboard messages are read and ignored (the vGPU has no input device).
 * Updates go out when the viewer asks and the pixels changed, at most 15/s.
 */
import { type Server, type Socket, createServer } from "node:net";
import { type Deflate, constants as zlibConstants, createDeflate } from "node:zlib";
import type { Logger } from "../base/index.js";
import type { Frame } from "../gpu/index.js";
import type { FrameReader } from "./frames.js";
import type { DaemonLink } from "./link.js";
import type { DaemonSnapshot } from "./protocol.js";

export const Encoding = { RAW: 0, ZLIB: 6, DESKTOP_SIZE: -223 } as const;
const MAX_CUT_TEXT = 1 << 20;
/** How often a waiting viewer's display is looked at (each look scans the whole screen out). */
const POLL_MS = 1000 / 15;

interface PixelFormat {
  bpp: number;
  depth: number;
  bigEndian: boolean;
  trueColour: boolean;
  rMax: number;
  gMax: number;
  bMax: number;
  rShift: number;
  gShift: number;
  bShift: number;
}

/** 32 bpp, depth 24, little-endian, 0x00RRGGBB: what most viewers take as it is. */
const SERVER_FORMAT: PixelFormat = {
  bpp: 32,
  depth: 24,
  bigEndian: false,
  trueColour: true,
  rMax: 255,
  gMax: 255,
  bMax: 255,
  rShift: 16,
  gShift: 8,
  bShift: 0,
};

function encodePixelFormat(f: PixelFormat, out: Buffer, at: number): void {
  out.writeUInt8(f.bpp, at);
  out.writeUInt8(f.depth, at + 1);
  out.writeUInt8(f.bigEndian ? 1 : 0, at + 2);
  out.writeUInt8(f.trueColour ? 1 : 0, at + 3);
  out.writeUInt16BE(f.rMax, at + 4);
  out.writeUInt16BE(f.gMax, at + 6);
  out.writeUInt16BE(f.bMax, at + 8);
  out.writeUInt8(f.rShift, at + 10);
  out.writeUInt8(f.gShift, at + 11);
  out.writeUInt8(f.bShift, at + 12);
  out.fill(0, at + 13, at + 16);
}

function decodePixelFormat(b: Buffer, at: number): PixelFormat {
  return {
    bpp: b.readUInt8(at),
    depth: b.readUInt8(at + 1),
    bigEndian: b.readUInt8(at + 2) !== 0,
    trueColour: b.readUInt8(at + 3) !== 0,
    rMax: b.readUInt16BE(at + 4),
    gMax: b.readUInt16BE(at + 6),
    bMax: b.readUInt16BE(at + 8),
    rShift: b.readUInt8(at + 10),
    gShift: b.readUInt8(at + 11),
    bShift: b.readUInt8(at + 12),
  };
}

/** Pixels of `rect` of an RGBA frame in the viewer's pixel format. */
export function convertPixels(
  frame: Frame,
  rect: { x: number; y: number; w: number; h: number },
  f: PixelFormat,
): Buffer {
  const bytes = f.bpp / 8;
  const out = Buffer.allocUnsafe(rect.w * rect.h * bytes);
  const src = frame.rgba;
  const fast = f.bpp === 32 && !f.bigEndian && f.rMax === 255 && f.gMax === 255 && f.bMax === 255;
  let o = 0;
  for (let y = rect.y; y < rect.y + rect.h; y++) {
    let p = (y * frame.width + rect.x) * 4;
    for (let x = 0; x < rect.w; x++, p += 4) {
      const r = src[p]!;
      const g = src[p + 1]!;
      const b = src[p + 2]!;
      if (fast && f.rShift === 16 && f.gShift === 8 && f.bShift === 0) {
        out[o] = b;
        out[o + 1] = g;
        out[o + 2] = r;
        out[o + 3] = 0;
        o += 4;
        continue;
      }
      const v =
        ((Math.round((r * f.rMax) / 255) << f.rShift) |
          (Math.round((g * f.gMax) / 255) << f.gShift) |
          (Math.round((b * f.bMax) / 255) << f.bShift)) >>>
        0;
      if (bytes === 4) {
        if (f.bigEndian) out.writeUInt32BE(v, o);
        else out.writeUInt32LE(v, o);
      } else if (bytes === 2) {
        if (f.bigEndian) out.writeUInt16BE(v & 0xffff, o);
        else out.writeUInt16LE(v & 0xffff, o);
      } else out[o] = v & 0xff;
      o += bytes;
    }
  }
  return out;
}

type Phase = "version" | "security" | "init" | "normal" | "closed";

/** One viewer's connection. */
class RfbSession {
  private phase: Phase = "version";
  private minor = 8;
  private input: Buffer = Buffer.alloc(0);
  private format: PixelFormat = SERVER_FORMAT;
  private encodings: number[] = [Encoding.RAW];
  private width = 0;
  private height = 0;
  private sent: Frame | undefined;
  private request: { incremental: boolean; x: number; y: number; w: number; h: number } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private zlib: Deflate | undefined;
  private readonly zlibOut: Buffer[] = [];

  constructor(
    private readonly socket: Socket,
    private readonly frame: () => Promise<Frame | undefined>,
    private readonly name: string,
    private readonly log: Logger,
  ) {
    socket.setNoDelay(true);
    socket.on("data", (d) => this.received(d));
    socket.on("error", () => this.close());
    socket.on("close", () => this.close());
    socket.write("RFB 003.008\n");
  }

  close(reason?: string): void {
    if (this.phase === "closed") return;
    if (reason) this.log.info({ reason }, "VNC viewer dropped");
    this.phase = "closed";
    clearTimeout(this.timer);
    this.zlib?.close();
    this.socket.destroy();
  }

  private received(d: Buffer): void {
    this.input = this.input.length ? Buffer.concat([this.input, d]) : d;
    for (;;) {
      if (this.phase === "closed") return;
      const used = this.step(this.input);
      if (used === 0) break;
      this.input = this.input.subarray(used);
    }
    if (this.input.length > MAX_CUT_TEXT + 64) this.close("input backlog");
  }

  /** Handles one message at the head of `b`; returns the bytes it took (0: need more). */
  private step(b: Buffer): number {
    switch (this.phase) {
      case "version": {
        if (b.length < 12) return 0;
        const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(b.subarray(0, 12).toString("latin1"));
        if (!m || Number(m[1]) !== 3) {
          this.close("not an RFB 3.x viewer");
          return 0;
        }
        const minor = Number(m[2]);
        this.minor = minor >= 8 ? 8 : minor === 7 ? 7 : 3;
        if (this.minor === 3) {
          this.socket.write(u32(1)); // security type None, chosen by the server
          this.phase = "init";
        } else {
          this.socket.write(Buffer.from([1, 1])); // one type offered: None
          this.phase = "security";
        }
        return 12;
      }
      case "security": {
        if (b.length < 1) return 0;
        if (b[0] !== 1) {
          if (this.minor >= 8)
            this.socket.write(Buffer.concat([u32(1), rfbString("only security type None")]));
          this.close("viewer chose a security type we do not offer");
          return 0;
        }
        if (this.minor >= 8) this.socket.write(u32(0));
        this.phase = "init";
        return 1;
      }
      case "init": {
        if (b.length < 1) return 0;
        this.phase = "normal";
        void this.serverInit();
        return 1;
      }
      case "normal":
        return this.message(b);
      case "closed":
        return 0;
    }
  }

  private async serverInit(): Promise<void> {
    const f = await this.frame();
    this.width = f?.width ?? 640;
    this.height = f?.height ?? 480;
    const name = Buffer.from(this.name, "utf8");
    const m = Buffer.alloc(24 + name.length);
    m.writeUInt16BE(this.width, 0);
    m.writeUInt16BE(this.height, 2);
    encodePixelFormat(this.format, m, 4);
    m.writeUInt32BE(name.length, 20);
    name.copy(m, 24);
    this.socket.write(m);
  }

  private message(b: Buffer): number {
    if (b.length === 0) return 0;
    switch (b[0]) {
      case 0: // SetPixelFormat
        if (b.length < 20) return 0;
        {
          const f = decodePixelFormat(b, 4);
          if (!f.trueColour || ![8, 16, 32].includes(f.bpp)) {
            this.close("viewer wants a colour map or an odd depth");
            return 0;
          }
          this.format = f;
          this.sent = undefined;
        }
        return 20;
      case 2: {
        // SetEncodings
        if (b.length < 4) return 0;
        const n = b.readUInt16BE(2);
        if (b.length < 4 + 4 * n) return 0;
        this.encodings = Array.from({ length: n }, (_, i) => b.readInt32BE(4 + 4 * i));
        return 4 + 4 * n;
      }
      case 3: // FramebufferUpdateRequest
        if (b.length < 10) return 0;
        this.request = {
          incremental: b[1] !== 0,
          x: b.readUInt16BE(2),
          y: b.readUInt16BE(4),
          w: b.readUInt16BE(6),
          h: b.readUInt16BE(8),
        };
        if (!this.request.incremental) this.sent = undefined;
        this.schedule(0);
        return 10;
      case 4: // KeyEvent: no keyboard on a vGPU
        return b.length < 8 ? 0 : 8;
      case 5: // PointerEvent: no pointer either
        return b.length < 6 ? 0 : 6;
      case 6: {
        // ClientCutText
        if (b.length < 8) return 0;
        const n = b.readUInt32BE(4);
        if (n > MAX_CUT_TEXT) {
          this.close("cut text too long");
          return 0;
        }
        return b.length < 8 + n ? 0 : 8 + n;
      }
      default:
        this.close(`unknown viewer message ${b[0]}`);
        return 0;
    }
  }

  private schedule(ms: number): void {
    if (this.timer || this.phase !== "normal") return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.update();
    }, ms);
  }

  /** Answers the pending request if there is something to send; otherwise looks again soon. */
  private async update(): Promise<void> {
    if (this.busy || !this.request || this.phase !== "normal") return;
    this.busy = true;
    try {
      const f = await this.frame();
      if (!f || this.phase !== "normal") return;
      const rects: Buffer[] = [];
      let count = 0;
      if (f.width !== this.width || f.height !== this.height) {
        if (this.encodings.includes(Encoding.DESKTOP_SIZE)) {
          this.width = f.width;
          this.height = f.height;
          rects.push(rectHeader(0, 0, f.width, f.height, Encoding.DESKTOP_SIZE));
          count++;
          this.sent = undefined;
          this.request = { incremental: false, x: 0, y: 0, w: f.width, h: f.height };
        }
      }
      const area = this.changed(f);
      if (!area && rects.length === 0) return this.schedule(POLL_MS);
      if (area) {
        rects.push(...(await this.encode(f, area)));
        count++;
      }
      const head = Buffer.alloc(4);
      head.writeUInt8(0, 0);
      head.writeUInt16BE(count, 2);
      if (this.phase !== "normal") return;
      this.socket.write(Buffer.concat([head, ...rects]));
      this.sent = { width: f.width, height: f.height, rgba: f.rgba.slice() };
      this.request = undefined;
    } catch (e) {
      this.close(`update failed: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      this.busy = false;
    }
  }

  /** The part of the requested area that changed since the last update (whole lines), within the session's size. */
  private changed(f: Frame): { x: number; y: number; w: number; h: number } | undefined {
    const r = this.request!;
    const x = Math.min(r.x, this.width);
    const y = Math.min(r.y, this.height);
    const w = Math.min(r.w, this.width - x, f.width - x);
    const h = Math.min(r.h, this.height - y, f.height - y);
    if (w <= 0 || h <= 0) return undefined;
    const s = this.sent;
    if (!s || s.width !== f.width || s.height !== f.height) return { x, y, w, h };
    const row = f.width * 4;
    const same = (line: number) =>
      Buffer.compare(
        f.rgba.subarray(line * row + x * 4, line * row + (x + w) * 4),
        s.rgba.subarray(line * row + x * 4, line * row + (x + w) * 4),
      ) === 0;
    let top = y;
    while (top < y + h && same(top)) top++;
    if (top === y + h) return undefined;
    let bottom = y + h - 1;
    while (bottom > top && same(bottom)) bottom--;
    return { x, y: top, w, h: bottom - top + 1 };
  }

  private async encode(f: Frame, a: { x: number; y: number; w: number; h: number }): Promise<Buffer[]> {
    const pixels = convertPixels(f, a, this.format);
    const chosen = this.encodings.find((e) => e === Encoding.RAW || e === Encoding.ZLIB) ?? Encoding.RAW;
    if (chosen === Encoding.RAW) return [rectHeader(a.x, a.y, a.w, a.h, Encoding.RAW), pixels];
    const z = await this.deflate(pixels);
    return [rectHeader(a.x, a.y, a.w, a.h, Encoding.ZLIB), u32(z.length), z];
  }

  /** One zlib stream per connection, flushed after each rectangle, as the zlib encoding requires. */
  private deflate(data: Buffer): Promise<Buffer> {
    if (!this.zlib) {
      this.zlib = createDeflate({ level: 1 });
      // Output is taken as it comes (a paused stream would stop at its high-water mark).
      this.zlib.on("data", (c: Buffer) => this.zlibOut.push(c));
      this.zlib.on("error", (e) => this.close(`zlib: ${e.message}`));
    }
    const z = this.zlib;
    return new Promise((resolve) => {
      z.write(data);
      z.flush(zlibConstants.Z_SYNC_FLUSH, () =>
        setImmediate(() => resolve(Buffer.concat(this.zlibOut.splice(0)))),
      );
    });
  }
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v, 0);
  return b;
}

function rfbString(s: string): Buffer {
  const text = Buffer.from(s, "utf8");
  return Buffer.concat([u32(text.length), text]);
}

function rectHeader(x: number, y: number, w: number, h: number, encoding: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(x, 0);
  b.writeUInt16BE(y, 2);
  b.writeUInt16BE(w, 4);
  b.writeUInt16BE(h, 6);
  b.writeInt32BE(encoding, 8);
  return b;
}

interface Console {
  readonly server: Server;
  readonly sessions: Set<RfbSession>;
  port: number;
}

/** A listening port per running vGPU, opened and closed as vGPUs come and go. */
export class VncConsoles {
  private readonly consoles = new Map<string, Console>();
  private readonly opening = new Map<string, Promise<void>>();

  constructor(
    private readonly link: DaemonLink,
    private readonly reader: FrameReader,
    private readonly host: string,
    /** First port to try (0: any free port for each vGPU). */
    private readonly basePort: number,
    private readonly log: Logger,
  ) {}

  address(uuid: string): string | undefined {
    const c = this.consoles.get(uuid);
    if (!c) return undefined;
    return `${this.host.includes(":") ? `[${this.host}]` : this.host}:${c.port}`;
  }

  /** Follows the running vGPUs of a snapshot: consoles for new ones, none for removed ones. */
  async sync(s: DaemonSnapshot): Promise<void> {
    const running = new Set(s.vgpus.map((v) => v.uuid));
    for (const [uuid, c] of this.consoles)
      if (!running.has(uuid)) {
        this.consoles.delete(uuid);
        for (const session of c.sessions) session.close("vGPU removed");
        c.server.close();
      }
    await this.ensure(s.vgpus);
  }

  /** Opens the consoles these running vGPUs do not have yet. */
  async ensure(vgpus: readonly { uuid: string; type: string }[]): Promise<void> {
    await Promise.all(
      vgpus.map(({ uuid, type }) => {
        if (this.consoles.has(uuid)) return undefined;
        let p = this.opening.get(uuid);
        if (!p) {
          p = this.open(uuid, type).finally(() => this.opening.delete(uuid));
          this.opening.set(uuid, p);
        }
        return p;
      }),
    );
  }

  private async frame(uuid: string): Promise<Frame | undefined> {
    const d = (await this.link.displays()).find((x) => x.uuid === uuid);
    return d ? this.reader.read(d, 1) : undefined;
  }

  private async open(uuid: string, type: string): Promise<void> {
    const sessions = new Set<RfbSession>();
    const server = createServer((socket) => {
      const s = new RfbSession(socket, () => this.frame(uuid), `mgpu ${type} ${uuid}`, this.log);
      sessions.add(s);
      socket.on("close", () => sessions.delete(s));
    });
    const taken = new Set([...this.consoles.values()].map((c) => c.port));
    for (let port = this.basePort, tries = 0; tries < 256; tries++, port = this.basePort ? port + 1 : 0) {
      if (port && taken.has(port)) continue;
      try {
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(port, this.host, () => {
            server.off("error", reject);
            resolve();
          });
        });
        const address = server.address();
        this.consoles.set(uuid, {
          server,
          sessions,
          port: typeof address === "object" && address ? address.port : port,
        });
        return;
      } catch (e) {
        if ((e as { code?: string }).code !== "EADDRINUSE" || !this.basePort) {
          this.log.warn({ uuid, err: String(e) }, "no VNC console for this vGPU");
          return;
        }
      }
    }
    this.log.warn({ uuid }, "no free port for a VNC console");
  }
}
