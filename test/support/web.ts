/** The web tests' helpers: a daemon with --http, JSON over fetch, a VM that draws. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DaemonProcess } from "../../src/manager/process.js";
import { runVms } from "../../src/vmm/sim/run.js";

export interface WebDaemon {
  readonly daemon: DaemonProcess;
  readonly url: string;
  readonly dir: string;
  stop(): Promise<void>;
}

export async function startWebDaemon(vgpus: string[], extra: string[] = []): Promise<WebDaemon> {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-web-"));
  const daemon = await DaemonProcess.start({
    vgpus,
    stateDir: dir,
    socketDir: dir,
    args: ["--http", "127.0.0.1:0", ...extra],
    logLevel: "error",
  });
  if (!daemon.http) throw new Error("the daemon did not report its HTTP address");
  return {
    daemon,
    url: daemon.http,
    dir,
    async stop() {
      await daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function json(
  url: string,
  init: { method?: string; body?: unknown } = {},
): Promise<{ status: number; body: unknown; type: string | null }> {
  const r = await fetch(url, {
    method: init.method ?? "GET",
    ...(init.body !== undefined
      ? { body: JSON.stringify(init.body), headers: { "content-type": "application/json" } }
      : {}),
  });
  const text = await r.text();
  return {
    status: r.status,
    body: text ? (JSON.parse(text) as unknown) : undefined,
    type: r.headers.get("content-type"),
  };
}

/** A simulated VM renders desktop frames on the vGPU for a moment, then stops (the last frame stays). */
export async function draw(socket: string, seconds = 0.5): Promise<void> {
  const [r] = await runVms([{ name: "drawer", socket, memoryModel: "kvm" }], { seconds });
  if (!r || r.error || r.frames === 0) throw new Error(`the VM did not draw: ${r?.error ?? "no frames"}`);
}
