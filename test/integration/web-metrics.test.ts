/**
 * /metrics against actions: N trapped accesses in → the traps counter +N;
 * GTT writes, refused entries, error replies by errno, connections; after a VM
 * renders, commands, interrupts, engine time, shares, DMA bytes, display mode
 * and the tick histogram agree with the daemon's own stats.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { BAR2_SIZE, Bar2, GTT_VALID } from "../../src/abi/index.js";
import { errnoName } from "../../src/sys/index.js";
import { Client, PciRegion, VfioUserError } from "../../src/vfio-user/index.js";
import { runVms } from "../../src/vmm/sim/run.js";
import { type WebDaemon, startWebDaemon } from "../support/web.js";

let web: WebDaemon;
let a: { uuid: string; socket: string; type: string };
let b: { uuid: string; socket: string; type: string };

/** Parses the text exposition into "name{labels}" → value (labels sorted as printed). */
async function scrape(): Promise<Map<string, number>> {
  const r = await fetch(`${web.url}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/plain/);
  const out = new Map<string, number>();
  for (const line of (await r.text()).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

function value(m: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let found: number | undefined;
  for (const [key, v] of m) {
    const brace = key.indexOf("{");
    const n = brace < 0 ? key : key.slice(0, brace);
    if (n !== name) continue;
    const have = brace < 0 ? [] : key.slice(brace + 1, -1).split(",");
    if (want.every((w) => have.includes(w)) && have.length === want.length) found = v;
  }
  assert.notEqual(found, undefined, `${name}${JSON.stringify(labels)} is exported`);
  return found!;
}

const of = (v: { uuid: string; type: string }) => ({ uuid: v.uuid, type: v.type });

before(async () => {
  web = await startWebDaemon(["mgpu-1q", "mgpu-2q"]);
  [a, b] = web.daemon.vgpus as [typeof a, typeof b];
});
after(() => web.stop());

test("N trapped accesses, K GTT writes, a refused entry and E error replies move their counters by exactly that", async () => {
  const m0 = await scrape();
  const client = Client.connect(a.socket);
  try {
    const m1 = await scrape();
    assert.equal(value(m1, "mgpu_connections"), 1);
    assert.equal(
      value(m1, "mgpu_connections_accepted_total") - value(m0, "mgpu_connections_accepted_total"),
      1,
    );
    client.regionWrite(PciRegion.CONFIG, 4, new Uint8Array([0x06, 0x00])); // memory space + bus master
    const N = 37;
    const out = new Uint8Array(4);
    for (let i = 0; i < N; i++) client.regionRead(PciRegion.BAR2, Bar2.PV_INFO, out);
    const K = 5;
    for (let i = 0; i < K; i++) client.regionWrite(PciRegion.BAR2, Bar2.GTT + 8 * i, new Uint8Array(8));
    // Local memory page 0 belongs to the host, never to a vGPU: refused.
    const hostile = new Uint8Array(8);
    new DataView(hostile.buffer).setUint32(0, GTT_VALID, true);
    client.regionWrite(PciRegion.BAR2, Bar2.GTT + 8 * K, hostile);
    const E = 3;
    for (let i = 0; i < E; i++)
      assert.throws(
        () => client.regionRead(PciRegion.BAR2, BAR2_SIZE, out),
        (e) => e instanceof VfioUserError && errnoName(e.errno) === "EINVAL",
      );
    const m2 = await scrape();
    const d = (name: string, labels: Record<string, string> = {}) =>
      value(m2, name, labels) - value(m0, name, labels);
    // The refused reads were trapped too.
    assert.equal(d("mgpu_vgpu_traps_total", { ...of(a), region: "bar2", op: "read" }), N + E);
    assert.equal(d("mgpu_vgpu_traps_total", { ...of(a), region: "bar2", op: "write" }), K + 1);
    assert.equal(d("mgpu_vgpu_traps_total", { ...of(a), region: "config", op: "write" }), 1);
    assert.equal(d("mgpu_vgpu_gtt_updates_total", of(a)), K + 1);
    assert.equal(d("mgpu_vgpu_gtt_rejected_total", of(a)), 1);
    assert.equal(value(m2, "mgpu_message_errors_total", { errno: "EINVAL" }), E);
    // The other vGPU saw nothing.
    assert.equal(d("mgpu_vgpu_traps_total", { ...of(b), region: "bar2", op: "read" }), 0);
    assert.equal(d("mgpu_vgpu_gtt_updates_total", of(b)), 0);
  } finally {
    client.close();
  }
});

test("after two VMs render: commands, interrupts, engine time, shares, DMA, mode and ticks match the daemon's stats", async () => {
  const ticks0 = value(await scrape(), "mgpu_scheduler_tick_seconds_count");
  const results = await runVms(
    [
      { name: "a", socket: a.socket, memoryModel: "kvm" },
      { name: "b", socket: b.socket, memoryModel: "xen" },
    ],
    { seconds: 0.6 },
  );
  for (const r of results) assert.ok(!r.error && r.frames > 0, r.error);
  const m = await scrape();
  const control = (await web.daemon.request({ cmd: "stats" })).vgpus as {
    uuid: string;
    share: number;
    stats: Record<string, number>;
  }[];
  for (const v of [a, b]) {
    const s = control.find((x) => x.uuid === v.uuid)!.stats;
    assert.ok(s.commands! > 0);
    assert.equal(value(m, "mgpu_vgpu_commands_scanned_total", of(v)), s.commands);
    assert.equal(value(m, "mgpu_vgpu_submissions_total", of(v)), s.submissions);
    assert.equal(value(m, "mgpu_vgpu_command_streams_rejected_total", of(v)), 0);
    assert.equal(value(m, "mgpu_vgpu_interrupts_total", of(v)), s.interrupts);
    assert.ok(s.interrupts! > 0);
    assert.equal(value(m, "mgpu_vgpu_engine_seconds_total", of(v)), s.busyMs! / 1000);
    const share = value(m, "mgpu_vgpu_engine_share_ratio", of(v));
    assert.ok(share > 0 && share < 1, `share ${share}`);
    assert.equal(value(m, "mgpu_vgpu_weight_share_ratio", of(v)), v === a ? 1 / 3 : 2 / 3);
    assert.equal(value(m, "mgpu_vgpu_display_width_pixels", of(v)), 1280);
    assert.equal(value(m, "mgpu_vgpu_display_height_pixels", of(v)), 800);
    assert.equal(value(m, "mgpu_vgpu_display_bits_per_pixel", of(v)), 32);
    assert.equal(value(m, "mgpu_vgpu_display_enabled", of(v)), 1);
  }
  // The Xen-style VM's batch pages are fetched by DMA messages; the KVM-style one's are read through its fd.
  // Its engine writes only local memory, and only bytes the engine wrote go back: none.
  assert.ok(value(m, "mgpu_vgpu_dma_bytes_total", { ...of(b), direction: "read" }) > 0);
  assert.equal(value(m, "mgpu_vgpu_dma_bytes_total", { ...of(b), direction: "write" }), 0);
  const ticks = value(m, "mgpu_scheduler_tick_seconds_count") - ticks0;
  assert.ok(ticks > 0, "scheduler ticks observed");
  assert.ok(value(m, "mgpu_scheduler_tick_seconds_sum") > 0);
  assert.equal(
    value(m, "mgpu_scheduler_tick_seconds_bucket", { le: "+Inf" }),
    value(m, "mgpu_scheduler_tick_seconds_count"),
  );
  assert.equal(value(m, "mgpu_vgpus"), 2);
});

test("a removed vGPU's series go; daemon-wide counters never go down", async () => {
  const before = await scrape();
  const created = (await (
    await fetch(`${web.url}/api/v1/vgpus`, {
      method: "POST",
      body: JSON.stringify({ type: "mgpu-1q" }),
      headers: { "content-type": "application/json" },
    })
  ).json()) as { uuid: string };
  const c = { uuid: created.uuid, type: "mgpu-1q" };
  const during = await scrape();
  assert.equal(value(during, "mgpu_vgpu_traps_total", { ...c, region: "bar2", op: "read" }), 0);
  assert.equal((await fetch(`${web.url}/api/v1/vgpus/${c.uuid}`, { method: "DELETE" })).status, 204);
  const afterwards = await scrape();
  assert.ok(![...afterwards.keys()].some((k) => k.includes(c.uuid)), "no series of the removed vGPU");
  for (const name of ["mgpu_connections_accepted_total", "mgpu_engine_seconds_total"])
    assert.ok(value(afterwards, name) >= value(before, name), name);
  assert.equal(value(afterwards, "mgpu_message_errors_total", { errno: "EINVAL" }), 3);
});
