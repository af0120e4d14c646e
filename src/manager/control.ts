/**
 * The daemon's control channel: JSON lines over a UNIX socket in the state
 * directory (and optionally over stdin/stdout). One request per line, one
 * reply per line; errors come back as {"error": …, "code": …}.
 */
import { readSync } from "node:fs";
import {
  POLLIN,
  SocketChannel,
  acceptUnix,
  closeFd,
  connectUnix,
  listenUnix,
  pollOne,
  setReceiveTimeout,
} from "../sys/index.js";

export type Request = Record<string, unknown> & { readonly cmd: string };
export type Reply = Record<string, unknown>;
export type Handler = (request: Request) => Reply;

/** What the control server needs from the loop it runs in (the vfio-user server's). */
export interface Watcher {
  watch(fd: number, onReadable: () => void): void;
  unwatch(fd: number): void;
}

const MAX_LINE = 1 << 20;

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

function answer(handler: Handler, line: string): Reply {
  const req = parse(line);
  if (!("cmd" in req)) return req;
  try {
    return handler(req as Request);
  } catch (e) {
    return {
      error: e instanceof Error ? e.message : String(e),
      code: (e as { code?: string }).code ?? "EIO",
    };
  }
}

/** Serves the control socket from the caller's loop. */
export class ControlServer {
  private readonly listenFd: number;
  private readonly clients = new Map<number, { ch: SocketChannel; pending: string }>();

  constructor(
    readonly path: string,
    private readonly loop: Watcher,
    private readonly handler: Handler,
  ) {
    this.listenFd = listenUnix(path);
    loop.watch(this.listenFd, () => this.accept());
  }

  private accept(): void {
    for (let fd = acceptUnix(this.listenFd); fd !== null; fd = acceptUnix(this.listenFd)) {
      const client = { ch: new SocketChannel(fd, { capacity: MAX_LINE, maxFds: 1 }), pending: "" };
      this.clients.set(fd, client);
      this.loop.watch(fd, () => this.readable(fd));
    }
  }

  private readable(fd: number): void {
    const c = this.clients.get(fd);
    if (!c) return;
    let n: number;
    try {
      n = c.ch.recv(0, c.ch.recvBuffer.length, false);
    } catch {
      n = 0;
    }
    for (const extra of c.ch.receivedFds) closeFd(extra);
    if (n === 0) return this.drop(fd);
    if (n < 0) return;
    c.pending += Buffer.from(c.ch.recvBuffer.subarray(0, n)).toString("utf8");
    if (c.pending.length > MAX_LINE) return this.drop(fd);
    let nl: number;
    while ((nl = c.pending.indexOf("\n")) >= 0) {
      const line = c.pending.slice(0, nl);
      c.pending = c.pending.slice(nl + 1);
      try {
        c.ch.sendBytes(Buffer.from(JSON.stringify(answer(this.handler, line)) + "\n"));
      } catch {
        return this.drop(fd);
      }
    }
  }

  private drop(fd: number): void {
    this.loop.unwatch(fd);
    this.clients.get(fd)?.ch.close();
    this.clients.delete(fd);
  }
}

/** Serves JSON lines on stdin/stdout (for tests and wrappers). */
export function serveStdio(loop: Watcher, handler: Handler, onEnd: () => void): void {
  let pending = "";
  const buf = Buffer.alloc(65536);
  loop.watch(0, () => {
    const n = readSync(0, buf, 0, buf.length, null);
    if (n === 0) {
      loop.unwatch(0);
      return onEnd();
    }
    pending += buf.subarray(0, n).toString("utf8");
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line) process.stdout.write(JSON.stringify(answer(handler, line)) + "\n");
    }
  });
}

/** One request to a running daemon; throws with a clear message if there is none. */
export function requestDaemon(path: string, request: Request, timeoutMs = 10_000): Reply {
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch (e) {
    throw Object.assign(new Error(`no mgpu daemon at ${path} (start one with: mgpu serve)`), {
      code: "ENOTCONN",
      cause: e,
    });
  }
  const ch = new SocketChannel(fd, { capacity: MAX_LINE, maxFds: 1 });
  try {
    setReceiveTimeout(fd, timeoutMs);
    ch.sendBytes(Buffer.from(JSON.stringify(request) + "\n"));
    let text = "";
    while (!text.includes("\n")) {
      if (pollOne(fd, POLLIN, timeoutMs) === 0) throw new Error("the daemon did not answer");
      const n = ch.recv(0, ch.recvBuffer.length, true);
      if (n <= 0) throw new Error("the daemon closed the connection");
      text += Buffer.from(ch.recvBuffer.subarray(0, n)).toString("utf8");
    }
    return JSON.parse(text.slice(0, text.indexOf("\n"))) as Reply;
  } finally {
    ch.close();
  }
}
