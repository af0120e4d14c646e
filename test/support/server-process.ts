/** Starts a fixture server in a child process and waits until it listens. */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
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

/** Starts src/samples/serve.js (the toolkit sample) with --socket-path. */
export function startSampleServer(options: { socketPath?: string } = {}): Promise<ServerProcess> {
  return startFixtureServer(join(fixtures, "..", "..", "src", "samples", "serve.js"), [], {
    ...options,
    socketFlag: "--socket-path=",
  });
}

export async function startFixtureServer(
  script: string,
  args: string[] = [],
  options: {
    socketPath?: string;
    socketFlag?: string;
    env?: Record<string, string>;
    /** RLIMIT_NOFILE for the server (set by the shell before it execs node). */
    nofile?: number;
  } = {},
): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-test-"));
  const socketPath = options.socketPath ?? join(dir, "device.sock");
  // The server's log goes to a file, not a pipe: tests block their event loop in
  // synchronous client calls, and a full pipe would stall the server's logging.
  const logPath = join(dir, "server.log");
  const logFd = openSync(logPath, "w");
  const socketArg = options.socketFlag ? `${options.socketFlag}${socketPath}` : socketPath;
  const argv = [resolve(fixtures, script), socketArg, ...args];
  const [command, commandArgs] =
    options.nofile === undefined
      ? [process.execPath, argv]
      : ["bash", ["-c", `ulimit -n ${options.nofile} && exec "$0" "$@"`, process.execPath, ...argv]];
  const child = spawn(command, commandArgs, {
    stdio: ["ignore", "pipe", logFd],
    env: { ...process.env, MGPU_LOG_LEVEL: process.env.MGPU_LOG_LEVEL ?? "warn", ...options.env },
  });
  closeSync(logFd);
  const readLog = () => readFileSync(logPath, "utf8");
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${readLog()}`)), 10_000);
    child.stdout!.once("data", () => {
      clearTimeout(timer);
      resolve();
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code}): ${readLog()}`));
    });
  });
  return {
    socketPath,
    child,
    fdCount: () => readdirSync(`/proc/${child.pid}/fd`).length,
    stderr: readLog,
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
