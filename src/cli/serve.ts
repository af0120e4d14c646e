/** `mgpu serve`: runs the daemon in the foreground (backend conventions: no daemonizing). */
import { Daemon } from "../manager/daemon.js";
import { WebServer } from "../web/bridge.js";

export interface ServeOptions {
  readonly stateDir: string;
  readonly vgpus: readonly string[];
  readonly socketDir?: string;
  readonly control: boolean;
  readonly watchdogMs?: number;
  /** HTTP API, metrics and dashboard (off unless given). */
  readonly http?: { readonly host: string; readonly port: number };
  /** VNC consoles, one port per vGPU from this one up (needs http). */
  readonly vnc?: { readonly host: string; readonly port: number };
}

export function serve(options: ServeOptions): void {
  const daemon = new Daemon({
    stateDir: options.stateDir,
    vgpus: options.vgpus,
    stdio: options.control,
    ...(options.socketDir ? { socketDir: options.socketDir } : {}),
    ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
  });
  const web = options.http
    ? WebServer.start(daemon, { ...options.http, ...(options.vnc ? { vnc: options.vnc } : {}) })
    : undefined;
  if (options.control) {
    process.stdout.write(
      JSON.stringify({ event: "ready", vgpus: daemon.describe(), ...(web ? { http: web.url } : {}) }) + "\n",
    );
  } else {
    if (web) console.log(`dashboard and API on ${web.url}`);
    for (const d of daemon.describe()) {
      console.log(`vGPU ${d.uuid} (${d.type}) on ${d.socket}`);
      console.log(`  qemu-system-x86_64 ... ${d.qemu.map((a) => (/[ {]/.test(a) ? `'${a}'` : a)).join(" ")}`);
    }
  }
  daemon.run();
  void web?.close();
}
