/** A worker for the dashboard benchmark: BAR2 register reads through a vGPU at a steady pace, timed. */
import { parentPort, workerData } from "node:worker_threads";
import { Bar2 } from "../src/abi/index.js";
import { Client, PciRegion } from "../src/vfio-user/index.js";

const { socket, seconds, go } = workerData as { socket: string; seconds: number; go: SharedArrayBuffer };
const client = Client.connect(socket);
client.regionWrite(PciRegion.CONFIG, 4, new Uint8Array([0x06, 0x00]));
const out = new Uint8Array(4);
const pause = new Int32Array(new SharedArrayBuffer(4));
const flag = new Int32Array(go);
parentPort!.postMessage({ ready: true });
while (Atomics.load(flag, 0) === 0) Atomics.wait(flag, 0, 0, 100);
const samples: number[] = [];
const end = performance.now() + seconds * 1000;
while (performance.now() < end) {
  const t0 = performance.now();
  client.regionRead(PciRegion.BAR2, Bar2.PV_INFO, out);
  samples.push((performance.now() - t0) * 1000);
  Atomics.wait(pause, 0, 0, 2); // about 400 traps a second: a probe, not a load
}
client.close();
parentPort!.postMessage({ samples });
