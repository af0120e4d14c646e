/** Starts a fixture server in a child process and waits until it listens. */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const fixtures = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures");

export interface ServerProcess {
  readonly socketPath: string;
  readonly child: ChildProcess;
  /** Open fds of the server process right now. */
  fdCount(): number;
  stderr(): string;
  stop(): Promise<void>;
}

export async function startFixtureServer(script: string, args: string[] = []): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-test-"));
  const socketPath = join(dir, "device.sock");
  const child = spawn(process.execPath, [join(fixtures, script), socketPath, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MGPU_LOG_LEVEL: process.env.MGPU_LOG_LEVEL ?? "warn" },
  });
  let err = "";
  child.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
    if (err.length > 1 << 20) err = err.slice(-(1 << 19));
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 10_000);
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      resolve();
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}): ${err}`));
    });
  });
  return {
    socketPath,
    child,
    fdCount: () => readdirSync(`/proc/${child.pid}/fd`).length,
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
