/**
 * The daemon's control channel: JSON lines over a UNIX socket in the state
 * directory (and optionally over stdin/stdout). One request per line, one reply
 * per line, in order; errors come back as {"error": …, "code": …}.
 *
 * The socket is closed to strangers: created 0600 (or 0660 for a configured
 * group) inside the 0700 state directory, and every connection's peer is
 * checked with SO_PEERCRED (our uid, root, or the configured group). Accepted
 * connections are handed to Node's event loop (non-blocking); a client that
 * stops reading is no longer read from once its replies back up (a bounded
 * queue: the socket's buffer plus one reply), and is dropped if one reply
 * alone exceeds the bound. No client can hold the vGPUs' loop.
 */
import { Socket } from "node:net";
import { createInterface } from "node:readline";
import { rmSync } from "node:fs";
import {
  POLLIN,
  SocketChannel,
  acceptUnix,
  closeFd,
  connectUnix,
  listenUnix,
  peerCredentials,
  pollOne,
  setReceiveTimeout,
} from "../sys/index.js";
import { type Logger, MgpuError, quietLogger } from "../base/index.js";
import { ManagerError } from "./errors.js";
import { type SocketAccess, bindPrivate, claimSocketPath } from "./sockets.js";

export type Request = Record<string, unknown> & { readonly cmd: string };
export type Reply = Record<string, unknown>;
export type Handler = (request: Request) => Promise<Reply> | Reply;

/** What the control server needs from the loop it runs in (the vfio-user server's). */
export interface Watcher {
  watch(fd: number, onReadable: () => void): void;
  unwatch(fd: number): void;
}

/** Longest request line. */
export const MAX_LINE = 1 << 20;
/** Reply bytes queued for one client before we stop reading its requests. */
export const MAX_QUEUED_REPLY_BYTES = 8 << 20;

function parse(line: string): Request | Reply {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { error: "not JSON", code: "EINVAL" };
  }
  if (typeof value !== "object" || value === null || typeof (value as { cmd?: unknown }).cmd !== "string")
    return { error: "a request is an object with a string cmd", code: "EINVAL" };
  return value as Request;
}

/** One line in, one reply out; the handler's errors become error replies with their code. */
export async function answer(handler: Handler, line: string): Promise<Reply> {
  const req = parse(line);
  if (!("cmd" in req)) return req;
  try {
    return await handler(req as Request);
  } catch (e) {
    return {
      error: e instanceof Error ? e.message : String(e),
      code: e instanceof MgpuError ? e.code : ((e as { code?: string }).code ?? "EIO"),
    };
  }
}

export interface ControlOptions {
  readonly access?: SocketAccess;
  /**
   * Called when a client's socket has input for Node's event loop to read
   * (its fd is also watched by the vfio-user poll, only to say so), so the
   * loop hands over without waiting for the end of its slice.
   */
  readonly onInput?: () => void;
  readonly logger?: Logger;
  readonly maxQueuedReplyBytes?: number;
}

/** Requests read ahead of their answers, per client, before we stop reading it. */
const MAX_PENDING_REQUESTS = 64;

/**
 * Serves one stream of JSON lines, requests answered in order. Each request
 * waits for its own turn of the event loop (setImmediate), so a client that
 * pipelines thousands of requests gets one answered per turn and the vGPUs'
 * rounds run in between; reading stops while too many requests or reply bytes
 * are queued (a client that does not read its replies stops being read).
 */
function serveLines(
  input: NodeJS.ReadableStream & { pause(): void; resume(): void },
  output: NodeJS.WritableStream & { writableLength: number },
  handler: Handler,
  onOverflow: (what: string) => void,
  maxQueued: number,
  reading: (on: boolean) => void = () => {},
): void {
  let chain = Promise.resolve();
  let pendingLine = "";
  let pending = 0;
  let waitingForDrain = false;
  let paused = false;
  const pause = () => {
    if (paused) return;
    paused = true;
    input.pause();
    reading(false);
  };
  const maybeResume = () => {
    if (!paused || waitingForDrain || pending >= MAX_PENDING_REQUESTS / 2) return;
    paused = false;
    input.resume();
    reading(true);
  };
  input.on("data", (chunk: Buffer | string) => {
    pendingLine += chunk.toString();
    if (pendingLine.length > MAX_LINE && !pendingLine.includes("\n"))
      return onOverflow("request line too long");
    let nl: number;
    while ((nl = pendingLine.indexOf("\n")) >= 0) {
      const line = pendingLine.slice(0, nl).trim();
      pendingLine = pendingLine.slice(nl + 1);
      if (!line) continue;
      if (++pending >= MAX_PENDING_REQUESTS) pause();
      chain = chain.then(async () => {
        // Pipelined requests take one event-loop turn each (a lone one is answered at once).
        if (pending > 1) await new Promise<void>((resolve) => setImmediate(resolve));
        const reply = JSON.stringify(await answer(handler, line)) + "\n";
        pending--;
        if (reply.length > maxQueued) return onOverflow("reply larger than the queue bound");
        const room = output.write(reply);
        if (!room || output.writableLength > maxQueued) {
          waitingForDrain = true;
          pause();
          output.once("drain", () => {
            waitingForDrain = false;
            maybeResume();
          });
        } else maybeResume();
      });
    }
  });
}

/** Serves the control socket: accepts from the caller's loop, talks on Node's event loop. */
export class ControlServer {
  private readonly listenFd: number;
  private readonly clients = new Set<Socket>();
  private readonly log: Logger;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly loop: Watcher,
    private readonly handler: Handler,
    private readonly options: ControlOptions = {},
  ) {
    this.log = options.logger ?? quietLogger;
    claimSocketPath(path);
    this.listenFd = bindPrivate(path, options.access ?? {}, () => listenUnix(path));
    loop.watch(this.listenFd, () => this.accept());
  }

  get connections(): number {
    return this.clients.size;
  }

  private mayConnect(uid: number, gid: number): boolean {
    return (
      uid === 0 ||
      uid === process.geteuid?.() ||
      (this.options.access?.gid !== undefined && gid === this.options.access.gid)
    );
  }

  private accept(): void {
    for (let fd = acceptUnix(this.listenFd); fd !== null; fd = acceptUnix(this.listenFd)) {
      let cred;
      try {
        cred = peerCredentials(fd);
      } catch (e) {
        closeFd(fd);
        this.log.warn({ err: String(e) }, "control connection without credentials; closed");
        continue;
      }
      if (!this.mayConnect(cred.uid, cred.gid)) {
        closeFd(fd);
        this.log.warn({ pid: cred.pid, uid: cred.uid }, "control connection from another user refused");
        continue;
      }
      const socket = new Socket({ fd, readable: true, writable: true });
      this.clients.add(socket);
      const drop = (why: string) => {
        this.log.warn({ pid: cred.pid, why }, "control client dropped");
        socket.destroy();
      };
      // Level-triggered: watched only while Node reads it, or poll would never sleep.
      const onInput = this.options.onInput;
      let watched = false;
      const reading = (on: boolean) => {
        if (!onInput || on === watched || this.closed) return;
        watched = on;
        if (on) this.loop.watch(fd, onInput);
        else this.loop.unwatch(fd);
      };
      reading(true);
      onInput?.();
      socket.on("error", () => socket.destroy());
      socket.on("end", () => reading(false));
      socket.on("close", () => {
        reading(false);
        this.clients.delete(socket);
      });
      serveLines(
        socket,
        socket,
        this.handler,
        drop,
        this.options.maxQueuedReplyBytes ?? MAX_QUEUED_REPLY_BYTES,
        reading,
      );
    }
  }

  /** Stops accepting, lets replies already written drain (up to `ms`), then close(). */
  async closeGracefully(ms = 500): Promise<void> {
    if (this.closed) return;
    this.loop.unwatch(this.listenFd);
    const ends = [...this.clients].map(
      (c) =>
        new Promise<void>((resolve) => (c.closed ? resolve() : (c.once("close", () => resolve()), c.end()))),
    );
    await Promise.race([Promise.all(ends), new Promise((r) => setTimeout(r, ms))]);
    this.close();
  }

  /** Stops accepting, closes every connection, removes the socket file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.loop.unwatch(this.listenFd);
    closeFd(this.listenFd);
    rmSync(this.path, { force: true });
    for (const c of this.clients) c.destroy();
    this.clients.clear();
  }
}

/**
 * Serves JSON lines on stdin/stdout (for tests and wrappers); `onEnd` when
 * stdin closes. Returns a function that stops reading stdin (so it no longer
 * keeps the process alive).
 */
export function serveStdio(handler: Handler, onEnd: () => void): () => void {
  const lines = createInterface({ input: process.stdin, terminal: false });
  let chain = Promise.resolve();
  let closing = false;
  lines.on("line", (line) => {
    if (!line.trim()) return;
    chain = chain.then(async () => {
      process.stdout.write(JSON.stringify(await answer(handler, line)) + "\n");
    });
  });
  lines.on("close", () => void chain.then(() => closing || onEnd()));
  return () => {
    closing = true;
    lines.close();
    process.stdin.destroy();
  };
}

/** One request to a running daemon; throws with a clear message if there is none. */
export function requestDaemon(path: string, request: Request, timeoutMs = 30_000): Reply {
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch (e) {
    throw new ManagerError("ENOENT", `no mgpu daemon at ${path} (start one with: mgpu serve)`, { cause: e });
  }
  // Replies carry screenshots: room for the largest mode's PNG, base64-encoded.
  const ch = new SocketChannel(fd, { capacity: 1 << 20, maxFds: 1 });
  try {
    setReceiveTimeout(fd, timeoutMs);
    const line = Buffer.from(JSON.stringify(request) + "\n");
    if (line.length > MAX_LINE) throw new ManagerError("EINVAL", "request too large");
    ch.sendBytes(line);
    const parts: Buffer[] = [];
    for (;;) {
      if (pollOne(fd, POLLIN, timeoutMs) === 0)
        throw new ManagerError("ETIMEDOUT", "the daemon did not answer");
      const n = ch.recv(0, ch.recvBuffer.length, true);
      if (n <= 0) throw new ManagerError("ENOENT", "the daemon closed the connection");
      const part = Buffer.from(ch.recvBuffer.subarray(0, n));
      parts.push(part);
      if (part.includes(0x0a)) break;
    }
    const text = Buffer.concat(parts).toString("utf8");
    return JSON.parse(text.slice(0, text.indexOf("\n"))) as Reply;
  } finally {
    ch.close();
  }
}
