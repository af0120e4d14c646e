/**
 * Runs `mgpu serve --control` as a child process and speaks its JSON-line
 * control channel: for the demo, the benchmarks and the tests, which all need
 * the daemon in another process from the VMs they drive.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Reply, Request } from "./control.js";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "cli", "main.js");

export interface DaemonVgpu {
  readonly uuid: string;
  readonly type: string;
  readonly socket: string;
}

export interface DaemonProcessOptions {
  /** vGPUs to create, as type[:uuid]. */
  readonly vgpus: readonly string[];
  /** State directory (default: a fresh temporary one, removed by stop()). */
  readonly stateDir?: string;
  readonly socketDir?: string;
  /** Extra `mgpu serve` options, e.g. ["--watchdog-ms", "100"]. */
  readonly args?: readonly string[];
  /** The daemon's log level (default: error, or MGPU_LOG_LEVEL). */
  readonly logLevel?: string;
}

export class DaemonProcess {
  private readonly waiters: ((reply: Reply) => void)[] = [];
  /** What the daemon wrote on stderr (its log). */
  stderr = "";
  /** The HTTP API's base URL, when started with --http. */
  http: string | undefined;

  private constructor(
    readonly child: ChildProcess,
    readonly vgpus: readonly DaemonVgpu[],
    private readonly ownedState: string | undefined,
  ) {}

  static async start(options: DaemonProcessOptions): Promise<DaemonProcess> {
    const owned = options.stateDir ? undefined : mkdtempSync(join(tmpdir(), "mgpu-daemon-"));
    const stateDir = options.stateDir ?? owned!;
    const args = [
      cli,
      "--state-dir",
      stateDir,
      "serve",
      "--control",
      ...(options.socketDir ? ["--socket-dir", options.socketDir] : []),
      ...(options.args ?? []),
      ...options.vgpus.flatMap((v) => ["--vgpu", v]),
    ];
    const child = spawn(process.execPath, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, MGPU_LOG_LEVEL: options.logLevel ?? process.env.MGPU_LOG_LEVEL ?? "error" },
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const lines = createInterface({ input: child.stdout! });
    const ready = await new Promise<Reply>((resolve, reject) => {
      lines.once("line", (l) => resolve(JSON.parse(l) as Reply));
      child.once("exit", (code) => reject(new Error(`mgpu serve exited (${code}): ${stderr.trim()}`)));
    });
    const p = new DaemonProcess(child, ready.vgpus as DaemonVgpu[], owned);
    p.stderr = stderr;
    if (typeof ready.http === "string") p.http = ready.http;
    child.stderr!.on("data", (d: Buffer) => (p.stderr += d.toString()));
    lines.on("line", (l) => p.waiters.shift()?.(JSON.parse(l) as Reply));
    return p;
  }

  request(command: Request): Promise<Reply> {
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.child.stdin!.write(JSON.stringify(command) + "\n");
    });
  }

  /** A vGPU's display as PNG bytes (the daemon sends them; it writes no file). */
  async screenshot(uuid: string): Promise<Buffer> {
    const r = await this.request({ cmd: "screenshot", uuid });
    if (typeof r.png !== "string")
      throw new Error(`screenshot of ${uuid}: ${String(r.error)} (${String(r.code)})`);
    return Buffer.from(r.png, "base64");
  }

  /** Stops the daemon with SIGTERM (it cleans up), SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once("exit", r));
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    }
    if (this.ownedState) rmSync(this.ownedState, { recursive: true, force: true });
  }
}
