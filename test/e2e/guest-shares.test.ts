/**
 * Two real guests of different vGPU types on one daemon, both keeping the
 * shared engine busy at once: over the contended window (read from the
 * daemon's stats) each gets the share of engine time its weight gives it,
 * within 5%.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { defaultTypes } from "../../src/mediator/index.js";
import { bootGuest } from "./guest.js";
import { vgpuGuest, vgpuTestBed } from "./guest-driver.js";
import { onHostWait } from "./host-line.js";

interface StatsEntry {
  uuid: string;
  type: string;
  stats: { busyMs: number; submissions: number };
}

/** How long both guests submit, and the part of it measured (the edges are left out). */
const SECONDS = 10;
const EDGE_MS = 2000;

test("two real guests of different types share the engine by weight (within 5%)", async (t) => {
  const guests = [
    { type: "mgpu-1q", uuid: "0c0de000-0000-4000-8000-0000000000b1" },
    { type: "mgpu-2q", uuid: "0c0de000-0000-4000-8000-0000000000b2" },
  ];
  // A batch is tens of milliseconds of engine time; a loaded host must not make it look hung.
  const bed = await vgpuTestBed(
    t,
    "s",
    guests.map((g) => `${g.type}:${g.uuid}`),
    ["--watchdog-ms", "5000"],
  );
  if (!bed) return;
  const { serve } = bed;
  const lines = guests.map((g) => bed.line(g.type));
  try {
    const snapshots: StatsEntry[][] = [];
    const snapshot = async () =>
      snapshots.push((await serve.request({ cmd: "stats" })).vgpus as StatsEntry[]);
    const ready = new Set<number>();
    const go = async () => {
      await Promise.all(lines.map((l) => l.send("go")));
      setTimeout(() => void snapshot(), EDGE_MS);
      setTimeout(() => void snapshot(), SECONDS * 1000 - EDGE_MS);
    };
    const results = await Promise.all(
      guests.map((g, i) =>
        bootGuest(
          vgpuGuest({
            tree: bed.tree,
            build: bed.build,
            socket: bed.socket(g.uuid),
            line: lines[i]!,
            // 64 fills of 4 MiB a batch (tens of ms), 32 batches in flight: a guest whose QEMU is
            // not scheduled for a while on a loaded host still has work queued.
            script: `mgputool contend $D /dev/ttyS1 ${SECONDS} 4 64`,
            onOutput: onHostWait(() => {
              ready.add(i);
              if (ready.size === guests.length) void go();
            }),
          }),
        ),
      ),
    );
    const context =
      results.map((r) => r.output.slice(-2500)).join("\n----\n") + `\nserver:\n${serve.stderr.slice(-2000)}`;
    for (const r of results) {
      assert.equal(r.timedOut, false, context);
      assert.equal(r.values.CONTEND_STATUS, "0", context);
    }
    assert.equal(snapshots.length, 2, context);
    const busy = guests.map((g) => {
      const at = (s: StatsEntry[]) => s.find((e) => e.uuid === g.uuid)!.stats.busyMs;
      return at(snapshots[1]!) - at(snapshots[0]!);
    });
    const total = busy.reduce((a, b) => a + b, 0);
    const weights = guests.map((g) => defaultTypes.find((d) => d.name === g.type)!.weight);
    const weightSum = weights.reduce((a, b) => a + b, 0);
    guests.forEach((g, i) => {
      const share = busy[i]! / total;
      const want = weights[i]! / weightSum;
      t.diagnostic(
        `${g.type}: ${busy[i]!.toFixed(0)} ms busy of ${total.toFixed(0)} ms: share ${share.toFixed(3)}, weight gives ${want.toFixed(3)}; ${results[i]!.values.CONTEND_MB_S} MB/s in the guest`,
      );
      assert.ok(
        Math.abs(share / want - 1) <= 0.05,
        `${g.type}: share ${share.toFixed(3)} vs ${want.toFixed(3)}`,
      );
    });
    // The window was contended: the engine was busy most of it.
    const windowMs = SECONDS * 1000 - 2 * EDGE_MS;
    t.diagnostic(`engine busy ${total.toFixed(0)} ms of a ${windowMs} ms window`);
    assert.ok(total > windowMs * 0.5, `engine busy ${total.toFixed(0)} ms of ${windowMs} ms`);
  } finally {
    await bed.close();
  }
});
