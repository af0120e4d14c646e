/** Runs `mgpu serve --control` in a child process and speaks its JSON-line control channel. */
import { type ChildProcess, spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");

export interface ServeVgpu {
  readonly uuid: string;
  readonly type: string;
  readonly socket: string;
}

export class ServeProcess {
  private readonly waiters: ((value: Record<string, unknown>) => void)[] = [];
  stderr = "";

  private constructor(
    readonly child: ChildProcess,
    readonly vgpus: ServeVgpu[],
  ) {}

  static async start(vgpus: string[], socketDir: string, extra: string[] = []): Promise<ServeProcess> {
    const args = [
      cli,
      "--state-dir",
      socketDir,
      "serve",
      "--control",
      "--socket-dir",
      socketDir,
      ...extra,
      ...vgpus.flatMap((v) => ["--vgpu", v]),
    ];
    const child = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const lines = createInterface({ input: child.stdout! });
    const first = await new Promise<Record<string, unknown>>((resolve, reject) => {
      lines.once("line", (l) => resolve(JSON.parse(l) as Record<string, unknown>));
      child.once("exit", (code) => reject(new Error(`mgpu serve exited ${code}: ${stderr}`)));
    });
    const p = new ServeProcess(child, first.vgpus as ServeVgpu[]);
    child.stderr!.on("data", (d: Buffer) => (p.stderr += d.toString()));
    lines.on("line", (l) => p.waiters.shift()?.(JSON.parse(l) as Record<string, unknown>));
    return p;
  }

  request(command: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.child.stdin!.write(JSON.stringify(command) + "\n");
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGKILL");
    await exited;
  }
}
