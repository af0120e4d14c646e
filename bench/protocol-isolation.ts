/**
 * One VMM against another on the same serving loop (issue 12), protocol side:
 * a victim's worst register read (device B's config space, read every ~1 ms)
 * while device A's VMM sits on a DMA_READ for 3 s — with the device using
 * asynchronous DMA, and with synchronous DMA for comparison (what a device that
 * still waits costs everyone) — and while A's client pipelines 8 x 1 MiB
 * REGION_READs and stops reading; then VmSize and fds of the server around
 * 10,000 DMA_MAP/UNMAP cycles of 4 GiB windows. Targets from the issue: ≤ 10 ms,
 * back to baseline.
 */
import { Client, Command, PciRegion } from "../src/vfio-user/index.js";
import { quietLogger } from "../src/base/index.js";
import { RawPeer, le, message } from "../test/support/raw-peer.js";
import {
  answerHeldDma,
  clientThatStopsReading,
  mapUnmapCycles,
  statusKiB,
  vmmSittingOnDma,
} from "../test/support/vmm-scenarios.js";
import { startFixtureServer } from "../test/support/server-process.js";
import type { BenchReport } from "./report.js";

const SIT_MS = 3000;
const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** Worst latency (ms) of the victim's reads over `forMs`, calling `meanwhile` between reads. */
function victimWorst(victim: Client, forMs: number): number {
  const out = new Uint8Array(4);
  let worst = 0;
  for (const end = performance.now() + forMs; performance.now() < end;) {
    const t0 = performance.now();
    victim.regionRead(PciRegion.CONFIG, 0, out);
    worst = Math.max(worst, performance.now() - t0);
    sleep(1);
  }
  return worst;
}

export async function run(): Promise<BenchReport> {
  const server = await startFixtureServer("serve-two.js", [], {
    env: { MGPU_SERVER_OPTIONS: JSON.stringify({ timeoutMs: SIT_MS + 2000 }) },
  });
  try {
    const path = server.socketPath;
    const victim = Client.connect(`${path}-b`, { logger: quietLogger });
    const idle = victimWorst(victim, 500);

    const asyncVmm = vmmSittingOnDma(path, 4);
    const duringAsync = victimWorst(victim, SIT_MS);
    answerHeldDma(asyncVmm);
    asyncVmm.close();

    // Synchronous DMA: the loop waits inside the doorbell write, and a victim's read
    // sent meanwhile waits with it (sent raw: this thread must answer the DMA itself).
    const pending = new RawPeer(`${path}-b`);
    pending.handshake();
    const syncVmm = vmmSittingOnDma(path, 2);
    sleep(50);
    const t0 = performance.now();
    const out = new Uint8Array(4);
    pending.send(message(50, Command.REGION_READ, 0, le([64, 0], [32, PciRegion.CONFIG], [32, 4])));
    sleep(SIT_MS);
    answerHeldDma(syncVmm);
    pending.readUntil(50);
    const duringSync = performance.now() - t0;
    pending.close();
    syncVmm.close();
    victim.regionRead(PciRegion.CONFIG, 0, out);

    const hog = clientThatStopsReading(path);
    const duringHog = victimWorst(victim, 1000);
    hog.close();

    const c = Client.connect(path, { logger: quietLogger });
    mapUnmapCycles(c, 1);
    const pid = server.child.pid!;
    const vm0 = statusKiB(pid, "VmSize");
    const fd0 = server.fdCount();
    const cycleMs = mapUnmapCycles(c, 10_000);
    const vm1 = statusKiB(pid, "VmSize");
    const fd1 = server.fdCount();
    c.close();
    victim.close();
    return {
      name: "protocol-isolation",
      figures: [
        { metric: "victim worst read, idle", value: idle, unit: "ms" },
        {
          metric: "victim worst read, other VMM sits 3 s on async DMA_READ",
          value: duringAsync,
          unit: "ms",
          note: "target <= 10 ms",
        },
        {
          metric: "victim read, other VMM sits 3 s on synchronous DMA_READ",
          value: duringSync,
          unit: "ms",
          note: "a device that waits (no async DMA) still holds the loop",
        },
        {
          metric: "victim worst read, other client stops reading (8 x 1 MiB)",
          value: duringHog,
          unit: "ms",
          note: "target <= 10 ms",
        },
        { metric: "10,000 DMA_MAP/UNMAP cycles (4 GiB windows)", value: cycleMs, unit: "ms" },
        { metric: "server VmSize before cycles", value: vm0, unit: "KiB" },
        { metric: "server VmSize after cycles", value: vm1, unit: "KiB", note: "target: baseline" },
        { metric: "server fds before cycles", value: fd0, unit: "fds" },
        { metric: "server fds after cycles", value: fd1, unit: "fds", note: "target: baseline" },
      ],
    };
  } finally {
    await server.stop();
  }
}
