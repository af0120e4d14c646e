/**
 * The web worker (see bridge.ts for why a thread): Fastify with the HTTP API,
 * /metrics, the dashboard's static files and live frames over a WebSocket, and
 * the VNC consoles. Everything here runs on the worker's own event loop.
 */
import { readlinkSync } from "node:fs";
import { workerData, type MessagePort } from "node:worker_threads";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import fastifyWebsocket from "@fastify/websocket";
import Fastify from "fastify";
import { defaultLogger } from "../base/index.js";
import { ComposedMapping } from "../sys/index.js";
import { registerApi } from "./api.js";
import { FrameReader } from "./frames.js";
import { LiveFrames } from "./live.js";
import { DaemonLink } from "./link.js";
import { DaemonMetrics } from "./metrics.js";
import { Monitor } from "./monitor.js";
import type { DaemonSnapshot, WorkerInput, WorkerReady } from "./protocol.js";
import { VncConsoles } from "./vnc.js";

/** The dashboard's files: plain HTML, CSS and JS in the source tree (no build step). */
const STATIC = fileURLToPath(new URL("../../../src/web/static/", import.meta.url));

const { input, port } = workerData as { input: WorkerInput; port: MessagePort };
const log = defaultLogger(input.logLevel);

function ready(message: WorkerReady): void {
  port.postMessage(message);
  const flag = new Int32Array(input.status);
  Atomics.store(flag, 0, message.ready ? 1 : 2);
  Atomics.notify(flag, 0);
}

/**
 * Browsers may be tricked into calling a loopback API: a page elsewhere posting
 * to it (an Origin that is not this server) or a DNS name rebound to 127.0.0.1
 * (a Host that is not ours). Neither gets through.
 */
function sameSite(host: string | undefined, origin: string | undefined, loopback: boolean): boolean {
  if (!host) return false;
  const name = host.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
  if (loopback && !["127.0.0.1", "localhost", "::1"].includes(name)) return false;
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

process.on("uncaughtException", (e) => log.error({ err: e.message, stack: e.stack }, "web worker error"));

async function main(): Promise<void> {
  const link = new DaemonLink(port, input.wakeFd);
  // The parent's local memory as the daemon's thread has it: each vGPU's slice is its own memfd,
  // placed at its offset the first time its display is read (a new tenant there replaces it).
  const memory = ComposedMapping.reserve(input.localMemory.size);
  memory.mapPrivate(0, input.localMemory.size);
  const placed = new Map<number, string>();
  const frames = new FrameReader(memory.bytes, (d) => {
    if (d.fd === undefined || placed.get(d.lmBase) === d.uuid) return;
    try {
      memory.mapFile(d.lmBase, d.lmSize, d.fd);
      placed.set(d.lmBase, d.uuid);
    } catch (e) {
      log.warn({ vgpu: d.uuid, err: String(e) }, "could not map a vGPU's memory");
    }
  });
  // Requests are checked as they come: extra properties are refused, not dropped; no type coercion.
  const app = Fastify({
    logger: false,
    bodyLimit: 64 << 10,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
  });
  const vnc = input.vnc ? new VncConsoles(link, frames, input.vnc.host, input.vnc.port, log) : undefined;
  const loopback = ["127.0.0.1", "::1", "localhost"].includes(input.host);
  app.addHook("onRequest", async (req, reply) => {
    if (!sameSite(req.headers.host, req.headers.origin, loopback))
      return reply.code(403).send({ error: "cross-site request refused", code: "EPERM" });
  });
  registerApi(app, { link, frames, log, ...(vnc ? { vnc } : {}) });
  const metrics = new DaemonMetrics(frames);
  const monitor = new Monitor(link, metrics);
  app.get("/metrics", async (_req, reply) => {
    await monitor.refresh();
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
  const describe = (s: DaemonSnapshot) => ({
    totalBusyMs: s.totalBusyMs,
    vgpus: s.vgpus.map((v) => ({
      uuid: v.uuid,
      type: v.type,
      weight: v.weight,
      socket: v.socket,
      mode: frames.mode(v.display),
      stats: v.stats,
      error: v.error,
      traps: [...v.regionReads, ...v.regionWrites].reduce((n, x) => n + x, 0),
      dmaBytes: v.dmaBytesRead + v.dmaBytesWritten,
      ...(vnc?.address(v.uuid) ? { vnc: vnc.address(v.uuid) } : {}),
    })),
  });
  const live = new LiveFrames(link, frames, input.frameBudgetMs, describe);
  monitor.onSnapshot((s) => live.broadcast(s));
  if (vnc) monitor.onSnapshot((s) => void vnc.sync(s));
  await app.register(fastifyWebsocket, { options: { maxPayload: 64 << 10 } });
  app.get("/api/v1/live", { websocket: true }, (socket) => {
    live.attach(socket);
    void monitor.refresh().catch(() => {}); // a fresh state for the newcomer (and everyone) now
  });
  // Every client sees a create or remove at once, not at the next second.
  app.addHook("onResponse", async (req, reply) => {
    if (req.method !== "GET" && req.url.startsWith("/api/v1/") && reply.statusCode < 300)
      void monitor.refresh().catch(() => {});
  });
  await app.register(fastifyStatic, { root: STATIC, prefix: "/" });
  // This thread's id (Linux), so operators and the benchmark can watch its CPU (top -H, /proc/PID/task/TID).
  const thread = Number(/task\/(\d+)$/.exec(readlinkSync("/proc/thread-self"))?.[1] ?? 0);
  app.get(
    "/api/v1/daemon",
    {
      schema: {
        response: {
          200: {
            type: "object",
            properties: {
              pid: { type: "number" },
              webThread: { type: "number" },
              frames: {
                type: "object",
                properties: Object.fromEntries(
                  ["framesSent", "bytesSent", "scanMs", "skippedForBudget"].map((k) => [
                    k,
                    { type: "number" },
                  ]),
                ),
              },
            },
          },
        },
      },
    },
    async () => ({ pid: process.pid, webThread: thread, frames: live.stats }),
  );
  await app.listen({ host: input.host, port: input.port });
  const address = app.server.address();
  const actualPort = typeof address === "object" && address ? address.port : input.port;
  const host = input.host.includes(":") ? `[${input.host}]` : input.host;
  if (!loopback)
    log.warn({ host: input.host }, "the HTTP API has no authentication and listens beyond loopback");
  ready({ ready: true, url: `http://${host}:${actualPort}` });
}

main().catch((e: unknown) => {
  ready({
    ready: false,
    error: e instanceof Error ? e.message : String(e),
    code: (e as { code?: string }).code ?? "EIO",
  });
});
