/**
 * `mgpu serve`: the daemon in the foreground (no daemonizing), or with
 * `--socket-path`/`--fd` one vGPU as a vfio-user backend program. SIGTERM and
 * SIGINT stop it cleanly: sockets removed, VMMs told, exit 0.
 */
import { VgpuBackend } from "../manager/backend.js";
import { Daemon } from "../manager/daemon.js";
import type { SocketAccess } from "../manager/sockets.js";
import type { Logger } from "../base/index.js";
import { WebServer } from "../web/bridge.js";

export interface ServeOptions {
  readonly stateDir: string;
  readonly vgpus: readonly { type: string; uuid?: string }[];
  readonly socketDir?: string;
  readonly control: boolean;
  readonly watchdogMs?: number;
  readonly socketPath?: string;
  readonly fd?: number;
  readonly access?: SocketAccess;
  readonly logger: Logger;
  /** HTTP API, metrics and dashboard (off unless given). */
  readonly http?: { readonly host: string; readonly port: number };
  /** VNC consoles, one port per vGPU from this one up (needs http). */
  readonly vnc?: { readonly host: string; readonly port: number };
}

const shellWord = (a: string) => (/[ {]/.test(a) ? `'${a}'` : a);

/** Stops `target` on SIGTERM/SIGINT; a second signal while stopping ends the process at once. */
function onSignals(stop: (signal: string) => void): void {
  let stopping = false;
  for (const signal of ["SIGTERM", "SIGINT"] as const)
    process.on(signal, () => {
      if (stopping) process.exit(1);
      stopping = true;
      stop(signal);
    });
}

export async function serve(options: ServeOptions): Promise<void> {
  if (options.socketPath !== undefined || options.fd !== undefined) {
    const spec = options.vgpus[0] ?? { type: "mgpu-1q" };
    const backend = new VgpuBackend({
      type: spec.type,
      ...(spec.uuid ? { uuid: spec.uuid } : {}),
      ...(options.socketPath !== undefined ? { socketPath: options.socketPath } : { fd: options.fd! }),
      ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
      ...(options.access ? { access: options.access } : {}),
      logger: options.logger,
    });
    onSignals(() => backend.stop());
    console.log(
      `vGPU ${backend.vgpu.uuid} (${spec.type}) on ${options.socketPath ?? `fd ${String(options.fd)}`}`,
    );
    await backend.run();
    return;
  }
  const daemon = Daemon.open({
    stateDir: options.stateDir,
    vgpus: options.vgpus.map((v) => (v.uuid ? `${v.type}:${v.uuid}` : v.type)),
    stdio: options.control,
    logger: options.logger,
    ...(options.socketDir ? { socketDir: options.socketDir } : {}),
    ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
    ...(options.access ? { access: options.access } : {}),
  });
  onSignals((signal) => daemon.stop(signal));
  let web: WebServer | undefined;
  try {
    web = options.http
      ? WebServer.start(daemon, { ...options.http, ...(options.vnc ? { vnc: options.vnc } : {}) })
      : undefined;
  } catch (e) {
    daemon.stop("the web server did not start");
    await daemon.run();
    throw e;
  }
  if (options.control) {
    process.stdout.write(
      JSON.stringify({ event: "ready", vgpus: daemon.describe(), ...(web ? { http: web.url } : {}) }) + "\n",
    );
  } else {
    if (web) console.log(`dashboard and API on ${web.url}`);
    for (const d of daemon.describe()) {
      console.log(`vGPU ${d.uuid} (${d.type}) on ${d.socket}`);
      console.log(`  qemu-system-x86_64 ... ${d.qemu.map(shellWord).join(" ")}`);
    }
    // Last, so a reader that waits for this line has seen every vGPU.
    console.log(`mgpu daemon: control socket ${daemon.controlPath}`);
  }
  await daemon.run();
  await web?.close();
}
