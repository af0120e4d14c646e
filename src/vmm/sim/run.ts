/** Runs several simulated VMs at once, one thread each, and collects what they did. */
import { Worker } from "node:worker_threads";
import type { MemoryModel } from "./vm.js";
import type { VmWorkerInput, VmWorkerResult } from "./vm-worker.js";

export interface SimulationVm {
  readonly name: string;
  readonly socket: string;
  readonly memoryModel: MemoryModel;
  readonly hostile?: boolean;
}

export interface RunOptions {
  readonly seconds: number;
  readonly onProgress?: (name: string, frames: number) => void;
  /** Frames in flight per VM. */
  readonly depth?: number;
  /** Desktop frames per submission. */
  readonly work?: number;
  /** A new scene every frame (default); false replays one stream (GPU-bound runs). */
  readonly animate?: boolean;
  /** Called once every VM has booted, as they are released to run together. */
  readonly onStart?: () => void;
}

/** Boots every VM, starts them together (so they contend), and waits for all to finish. */
export async function runVms(vms: readonly SimulationVm[], options: RunOptions): Promise<VmWorkerResult[]> {
  const url = new URL("./vm-worker.js", import.meta.url);
  const go = new SharedArrayBuffer(4);
  let bootedCount = 0;
  const bootedOne = () => {
    if (++bootedCount < vms.length) return;
    options.onStart?.();
    Atomics.store(new Int32Array(go), 0, 1);
    Atomics.notify(new Int32Array(go), 0);
  };
  return Promise.all(
    vms.map(
      (vm) =>
        new Promise<VmWorkerResult>((resolve, reject) => {
          const input: VmWorkerInput = {
            ...vm,
            seconds: options.seconds,
            hostile: vm.hostile ?? false,
            depth: options.depth ?? 3,
            work: options.work ?? 1,
            animate: options.animate ?? true,
            go,
          };
          const worker = new Worker(url, { workerData: input });
          worker.on(
            "message",
            (m: { kind: string; name?: string; frames?: number; result?: VmWorkerResult }) => {
              if (m.kind === "booted") bootedOne();
              else if (m.kind === "progress") options.onProgress?.(m.name!, m.frames!);
              else if (m.kind === "done") {
                resolve(m.result!);
                void worker.terminate();
              }
            },
          );
          worker.on("error", reject);
        }),
    ),
  );
}
