/**
 * Hostile command streams from inside a real guest, with a second guest on the
 * same daemon as the victim: GTT entries aimed outside the slice, privileged
 * register writes, a runaway batch chain, too-deep nesting, blits outside the
 * partition, a ring outside it, a hung batch. Each is rejected or contained,
 * the attacker hears of it through ENGINE_ERROR and an MSI and recovers with
 * an engine reset; the victim's display and memory do not change.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { EngineError, Irq, type ScanRejection, ScanRejectionCode } from "../../src/abi/index.js";
import { pngToFrame } from "../../src/gpu/index.js";
import { bootGuest } from "./guest.js";
import { differingPixels, nativeResults, vgpuGuest, vgpuTestBed } from "./guest-driver.js";
import { type HostLine, onHostWait } from "./host-line.js";

interface StatsEntry {
  uuid: string;
  stats: { rejected: number; hangs: number; gttRejected: number; interrupts: number };
}

const rejected = (reason: ScanRejection) => EngineError.REJECTED | ScanRejectionCode[reason];

/** Each hostile stream mgputool sends, and the ENGINE_ERROR the guest must be told. */
const expected: Record<string, number> = {
  GTT_REFUSED_USE: EngineError.GTT_FAULT,
  GTT_UNMAPPED_IOVA: EngineError.GTT_FAULT,
  LRI_RING_START: rejected("register-not-allowed"),
  LRI_GTT: rejected("register-not-allowed"),
  PRIVILEGED_COMMAND: rejected("privileged-command"),
  RUNAWAY_CHAIN: rejected("runaway-batch"),
  BATCH_NESTING: rejected("batch-nesting"),
  BLIT_NEXT_PARTITION: rejected("address-outside-partition"),
  COPY_FROM_HOST: rejected("address-outside-partition"),
  BLIT_ROWS_PAST_END: rejected("address-outside-partition"),
  MALFORMED_BLIT: rejected("malformed-command"),
  RING_OUTSIDE: rejected("address-outside-partition"),
  HUNG_BATCH: EngineError.HANG,
};

test("hostile streams from a real guest are rejected or contained; a second guest's display and memory do not change", async (t) => {
  const victimId = "0c0de000-0000-4000-8000-0000000000a1";
  const attackerId = "0c0de000-0000-4000-8000-0000000000a2";
  const bed = await vgpuTestBed(t, "h", [`mgpu-2q:${victimId}`, `mgpu-1q:${attackerId}`]);
  if (!bed) return;
  const { serve } = bed;
  const victimLine = bed.line("victim");
  const attackerLine = bed.line("attacker");
  const snapshots: { sha256: string; png: Buffer }[] = [];
  const snapshot = async () => {
    const sum = await serve.request({ cmd: "checksum", uuid: victimId });
    snapshots.push({ sha256: String(sum.sha256), png: await serve.screenshot(victimId) });
  };
  try {
    const waiting = new Set<string>();
    const bothWaiting = async () => {
      if (!(waiting.has("victim") && waiting.has("hostile"))) return;
      await snapshot();
      await attackerLine.send("go");
    };
    let attackerDone = false;
    const boot = (uuid: string, script: string, line: HostLine, onOutput: (s: string) => void) =>
      bootGuest(
        vgpuGuest({
          tree: bed.tree,
          build: bed.build,
          socket: bed.socket(uuid),
          script,
          line,
          onOutput,
          timeoutMs: 300_000,
        }),
      );
    const waitsOf = () =>
      onHostWait((label) => {
        waiting.add(label);
        void bothWaiting();
      });
    const attackerWaits = waitsOf();
    let attackerSeen = "";
    const [victim, attacker] = await Promise.all([
      boot(victimId, "mgputool victim $D /workloads.txt /dev/ttyS1", victimLine, waitsOf()),
      boot(attackerId, "mgputool hostile $D /dev/ttyS1", attackerLine, (text) => {
        attackerWaits(text);
        attackerSeen += text;
        if (!attackerDone && attackerSeen.includes("HOSTILE_DONE=1")) {
          attackerDone = true;
          void snapshot().finally(() => void victimLine.send("go"));
        }
      }),
    ]);
    const stats = (await serve.request({ cmd: "stats" })).vgpus as StatsEntry[];
    const context = `victim:\n${victim.output.slice(-2500)}\nattacker:\n${attacker.output.slice(-5000)}\nserver:\n${serve.stderr.slice(-3000)}`;
    t.diagnostic(
      `guests ran ${(victim.durationMs / 1000).toFixed(1)} s and ${(attacker.durationMs / 1000).toFixed(1)} s`,
    );
    assert.equal(victim.timedOut || attacker.timedOut, false, context);
    const a = attacker.values;

    // Every hostile stream: the verdict in ENGINE_ERROR, with an ENGINE_ERROR interrupt, then a working engine.
    for (const [name, code] of Object.entries(expected)) {
      const verdict = a[`H_${name}`] ?? "";
      t.diagnostic(`${name}: ${verdict}`);
      assert.match(verdict, /^status=-5 /, `${name} failed with EIO: ${context}`);
      assert.equal(Number(/code=(0x[0-9a-f]+)/.exec(verdict)?.[1]), code, `${name}: ${verdict}`);
      assert.ok(Number(/iir=(0x[0-9a-f]+)/.exec(verdict)?.[1]) & Irq.ENGINE_ERROR, `${name} interrupted`);
      assert.equal(a[`R_${name}`], "ok", `${name}: the attacker's engine works after a reset`);
    }
    // Refused GTT entries: a GTT_FAULT interrupt each.
    for (const name of ["GTT_NEXT_SLICE_IRQ", "GTT_HOST_MEMORY_IRQ", "GTT_SYSTEM_RANGE_IRQ"])
      assert.ok(Number(a[`H_${name}`]) & Irq.GTT_FAULT, `${name}: ${a[`H_${name}`]}`);
    assert.equal(a.H_MMIO_UNKNOWN, "0x0,0x0", "writes to registers the vGPU has not are dropped");
    // The watchdog preempted the hung batch long before its work could have finished.
    t.diagnostic(`hung batch of ${a.H_HANG_FILLS} fills preempted`);

    const byId = (id: string) => stats.find((s) => s.uuid === id)!.stats;
    assert.equal(byId(attackerId).hangs, 1);
    assert.equal(byId(attackerId).gttRejected, 3);
    assert.ok(byId(attackerId).rejected >= 10, `scanner rejections: ${byId(attackerId).rejected}`);
    assert.equal(byId(victimId).rejected, 0);
    assert.equal(byId(victimId).hangs, 0);

    // The victim: memory (host's checksum of its whole slice) and display the same before and after.
    assert.equal(snapshots.length, 2, context);
    assert.equal(snapshots[1]!.sha256, snapshots[0]!.sha256, "victim's local memory unchanged");
    assert.ok(snapshots[1]!.png.equals(snapshots[0]!.png), "victim's display unchanged");
    const desktop = nativeResults().find((n) => n.name === "desktop-frame")!;
    const frame = pngToFrame(snapshots[1]!.png);
    assert.equal(differingPixels(frame, desktop), 0, "the victim still shows the native desktop frame");
    const v = victim.values;
    assert.equal(v.VICTIM_CRC_AFTER, v.VICTIM_CRC_BEFORE, context);
    assert.equal(v.VICTIM_CRC_BEFORE, `0x${desktop.crc.toString(16).padStart(8, "0")}`);
    assert.equal(v.VICTIM_ENGINE_ERROR, "0x0");
    assert.equal(v.VICTIM_IRQS_DURING, "0", "no interrupt reached the victim");
    assert.equal(v.VICTIM_STILL_RENDERS, "yes");
  } finally {
    await bed.close();
  }
});
