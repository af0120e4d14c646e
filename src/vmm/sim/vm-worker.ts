/**
 * One simulated VM on its own thread: boots a SimVm against a vGPU socket, runs
 * the guest driver on an animated desktop (frames pipelined through the ring),
 * and reports progress and results to the parent thread. A "hostile" VM mixes
 * in command streams the mediator must reject, and a runaway batch.
 */
import { parentPort, workerData } from "node:worker_threads";
import { EngineReg, encodeOps, miBatchBufferStart, miLoadRegisterImm, xyColorBlt } from "../../abi/index.js";
import { desktopFrame } from "../../gpu/index.js";
import { GuestDriver, GuestDriverError } from "../../guest/index.js";
import { type MemoryModel, SimVm } from "./vm.js";
import { quietLogger } from "../../base/index.js";

export interface VmWorkerInput {
  readonly name: string;
  readonly socket: string;
  readonly memoryModel: MemoryModel;
  readonly seconds: number;
  readonly hostile: boolean;
  /** Frames kept in flight. */
  readonly depth: number;
  /** Desktop frames drawn per submitted frame (more: GPU-heavier). */
  readonly work: number;
  /** A new scene every frame (else the same stream again: the guest spends no CPU encoding). */
  readonly animate: boolean;
  /** All VMs start rendering together: the parent sets it to 1 once every VM has booted. */
  readonly go: SharedArrayBuffer;
}

export interface VmWorkerResult {
  readonly name: string;
  readonly frames: number;
  /** Frames the device had finished when time was up (the honest throughput). */
  readonly completedInTime: number;
  /** The seed of the last frame drawn (to re-render it for the pixel check). */
  readonly lastSeed: number;
  readonly interrupts: number;
  readonly accesses: { ram: number; passThrough: number; trapped: number };
  readonly rejectedSeen: number;
  readonly error?: string;
}

const MiB = 1 << 20;
const input = workerData as VmWorkerInput;
const quiet = quietLogger;

function main(): VmWorkerResult {
  const vm = new SimVm({
    name: input.name,
    ramSize: 32 * MiB,
    memoryModel: input.memoryModel,
    socket: input.socket,
    logger: quiet,
  });
  const driver = new GuestDriver(vm);
  driver.slots = input.depth;
  driver.init(0xe0000000, { systemBatch: { gpa: 16 * MiB, bytes: vm.ramAt(16 * MiB, 4 * MiB) } });
  const surfaces = driver.prepare(desktopFrame(1), true);
  driver.modeSet(surfaces.screen!);
  const go = new Int32Array(input.go);
  parentPort!.postMessage({ kind: "booted", name: input.name });
  while (Atomics.load(go, 0) === 0) Atomics.wait(go, 0, 0, 1000);
  const end = Date.now() + input.seconds * 1000;
  let frames = 0;
  let lastSeed = 1;
  let rejectedSeen = 0;
  let stream: number[] | undefined;
  let lastReport = 0;
  // A batch that chains to itself forever, for the hostile VM.
  const loop = driver.alloc(4096);
  new Uint32Array(
    vm.barMemory(0)!.buffer,
    vm.barMemory(0)!.byteOffset + (loop - driver.partition.gmBase),
    3,
  ).set(miBatchBufferStart(loop));
  while (Date.now() < end) {
    if (input.hostile && frames % 5 === 4) {
      // Something the mediator must refuse: a fill outside our memory, a privileged register, a runaway chain.
      const p = driver.partition;
      const kind = ((frames / 5) % 3) | 0;
      const attack =
        kind === 0
          ? xyColorBlt(p.gmBase + p.gmSize, 4096, { x: 0, y: 0, width: 64, height: 64 }, 0xdead)
          : kind === 1
            ? miLoadRegisterImm([[EngineReg.RING_START, 0]])
            : miBatchBufferStart(loop);
      try {
        driver.drain();
        driver.execute(attack);
      } catch (e) {
        if (!(e instanceof GuestDriverError)) throw e;
        rejectedSeen++;
        driver.recover();
      }
    }
    if (input.animate || !stream) {
      lastSeed = frames + 2;
      const ops = encodeOps(desktopFrame(lastSeed).ops, surfaces);
      stream = input.work > 1 ? Array.from({ length: input.work }, () => ops).flat() : ops;
    }
    driver.enqueue(stream);
    frames++;
    if (Date.now() - lastReport > 200) {
      lastReport = Date.now();
      parentPort!.postMessage({ kind: "progress", name: input.name, frames });
    }
  }
  const completedInTime = driver.completed;
  driver.drain();
  const result = {
    name: input.name,
    frames,
    completedInTime,
    lastSeed,
    interrupts: driver.interrupts,
    accesses: { ...vm.accesses },
    rejectedSeen,
  };
  vm.close();
  return result;
}

try {
  parentPort!.postMessage({ kind: "done", result: main() });
} catch (e) {
  parentPort!.postMessage({
    kind: "done",
    result: {
      name: input.name,
      frames: 0,
      completedInTime: 0,
      lastSeed: 0,
      interrupts: 0,
      accesses: { ram: 0, passThrough: 0, trapped: 0 },
      rejectedSeen: 0,
      error: String(e),
    },
  });
}
