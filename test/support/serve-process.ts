/** The tests' handle on `mgpu serve --control` in a child process (see src/manager/process.ts). */
import { DaemonProcess } from "../../src/manager/process.js";

export type { DaemonVgpu as ServeVgpu } from "../../src/manager/process.js";

export const ServeProcess = {
  /** Starts the daemon with its state (and sockets) in `dir`. */
  start(vgpus: string[], dir: string, extra: string[] = []): Promise<DaemonProcess> {
    return DaemonProcess.start({ vgpus, stateDir: dir, socketDir: dir, args: extra, logLevel: "warn" });
  },
};
export type ServeProcess = DaemonProcess;
