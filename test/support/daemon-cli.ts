/**
 * `mgpu serve` as an operator runs it (no --control): a child process whose
 * stdout announces the control socket and the vGPUs, stopped by the tests
 * with `quit`, signals or SIGKILL.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");

export interface RunningDaemon {
  readonly child: ChildProcess;
  /** vGPU uuid → socket, as announced. */
  readonly vgpus: Map<string, string>;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: string;
  stderr: string;
}

export interface CliResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export function mgpu(state: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [cli, "--state-dir", state, ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Starts `mgpu serve`; resolves once it printed its control socket line (or rejects with its stderr). */
export function startDaemon(
  state: string,
  args: readonly string[] = [],
  options: { umask?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<RunningDaemon> {
  const { umask } = options;
  const env = { ...process.env, ...options.env };
  const argv = [cli, "--state-dir", state, "serve", ...args];
  // A umask applies to the child only through a shell (Node has no per-spawn umask).
  const child =
    umask === undefined
      ? spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"], env })
      : spawn(
          "/bin/sh",
          ["-c", `umask ${umask.toString(8).padStart(3, "0")} && exec "$@"`, "sh", process.execPath, ...argv],
          { stdio: ["ignore", "pipe", "pipe"], env },
        );
  const d: RunningDaemon = {
    child,
    vgpus: new Map(),
    exit: new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal }))),
    stdout: "",
    stderr: "",
  };
  child.stderr!.on("data", (b: Buffer) => (d.stderr += b.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (b: Buffer) => {
      d.stdout += b.toString();
      for (const m of d.stdout.matchAll(/^vGPU (\S+) \(\S+\) on (\S+)$/gm)) d.vgpus.set(m[1]!, m[2]!);
      if (/^mgpu daemon: control socket /m.test(d.stdout)) resolve(d);
    });
    void d.exit.then(({ code, signal }) =>
      reject(new Error(`mgpu serve exited (${code ?? signal}) before it was ready: ${d.stderr}`)),
    );
  });
}
