/** The worker's side of the bridge: requests to the daemon's thread, answered asynchronously. */
import { writeSync } from "node:fs";
import type { MessagePort } from "node:worker_threads";
import { MgpuError } from "../base/index.js";
import type { Reply } from "../manager/control.js";
import type { BridgeAnswer, BridgeRequest, DaemonSnapshot, DisplayState } from "./protocol.js";

/** An error the daemon answered with (its code is the CLI's), or one of the web layer's. */
export class ApiError extends MgpuError {}

const TIMEOUT_MS = 30_000;

export class DaemonLink {
  private nextId = 1;
  private readonly waiting = new Map<number, (reply: Reply) => void>();
  private readonly one = new BigUint64Array([1n]);

  constructor(
    private readonly port: MessagePort,
    private readonly wakeFd: number,
  ) {
    port.on("message", (a: BridgeAnswer) => {
      const done = this.waiting.get(a.id);
      this.waiting.delete(a.id);
      done?.(a.reply);
    });
  }

  /** One request; the daemon's {error, code} replies come back as they are. */
  call(body: BridgeRequest): Promise<Reply> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve({ error: "the daemon did not answer", code: "ETIMEDOUT" });
      }, TIMEOUT_MS);
      this.waiting.set(id, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      this.port.postMessage({ id, body });
      writeSync(this.wakeFd, this.one);
    });
  }

  /** One request; an error reply throws an ApiError with the daemon's code. */
  async ok(body: BridgeRequest): Promise<Reply> {
    const reply = await this.call(body);
    if (typeof reply.error === "string") throw new ApiError(String(reply.code ?? "EIO"), reply.error);
    return reply;
  }

  async snapshot(): Promise<DaemonSnapshot> {
    return (await this.ok({ op: "snapshot" })).snapshot as DaemonSnapshot;
  }

  async displays(): Promise<DisplayState[]> {
    return (await this.ok({ op: "displays" })).displays as DisplayState[];
  }
}
