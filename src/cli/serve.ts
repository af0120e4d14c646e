/** `mgpu serve`: runs the daemon in the foreground (backend conventions: no daemonizing). */
import { Daemon } from "../manager/daemon.js";

export interface ServeOptions {
  readonly stateDir: string;
  readonly vgpus: readonly string[];
  readonly socketDir?: string;
  readonly control: boolean;
  readonly watchdogMs?: number;
}

export function serve(options: ServeOptions): void {
  const daemon = new Daemon({
    stateDir: options.stateDir,
    vgpus: options.vgpus,
    stdio: options.control,
    ...(options.socketDir ? { socketDir: options.socketDir } : {}),
    ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
  });
  if (options.control) {
    process.stdout.write(JSON.stringify({ event: "ready", vgpus: daemon.describe() }) + "\n");
  } else {
    for (const d of daemon.describe()) {
      console.log(`vGPU ${d.uuid} (${d.type}) on ${d.socket}`);
      console.log(`  qemu-system-x86_64 ... ${d.qemu.map((a) => (/[ {]/.test(a) ? `'${a}'` : a)).join(" ")}`);
    }
  }
  daemon.run();
}
