/**
 * The daemon survives its own restarts (issue 13): stopped by `quit`, SIGTERM,
 * SIGINT or SIGKILL, the next `mgpu serve` on the same state directory comes up,
 * its defined vGPUs come back and a client attaches. A clean stop removes every
 * socket; a killed daemon's stale sockets are replaced. Two daemons on one
 * state directory: the second refuses with a clear message, the first keeps
 * serving. A live socket or a file that is not a socket is never taken over.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "../../src/vfio-user/index.js";
import { quietLogger } from "../../src/base/index.js";
import { requestDaemon } from "../../src/manager/control.js";
import { mgpu, startDaemon } from "../support/daemon-cli.js";

let state: string;
let defined: string;

before(() => {
  state = mkdtempSync(join(tmpdir(), "mgpu-lifecycle-"));
  const r = mgpu(state, ["define", "--type", "mgpu-1q", "--autostart", "--name", "survivor"]);
  assert.equal(r.status, 0, r.stderr);
  defined = r.stdout.trim();
});
after(() => rmSync(state, { recursive: true, force: true }));

/** A VMM's first steps: VERSION, DEVICE_GET_INFO. */
function attach(socket: string): Client {
  const client = Client.connect(socket, { logger: quietLogger });
  assert.equal(client.getDeviceInfo().numRegions, 9);
  return client;
}

const control = () => join(state, "control.sock");

for (const stop of ["quit", "SIGTERM", "SIGINT", "SIGKILL"] as const) {
  test(`stopped by ${stop}, the daemon starts again on the same state dir with its vGPUs`, async () => {
    const first = await startDaemon(state);
    const socket = first.vgpus.get(defined);
    if (!socket) first.child.kill("SIGKILL");
    assert.ok(socket, `autostart vGPU announced: ${first.stdout}`);
    const client = attach(socket);
    if (stop === "quit") assert.deepEqual(requestDaemon(control(), { cmd: "quit" }), { ok: true });
    else first.child.kill(stop);
    const { code, signal } = await first.exit;
    if (stop === "SIGKILL") {
      assert.equal(signal, "SIGKILL");
      assert.ok(existsSync(control()) && existsSync(socket), "a killed daemon leaves its sockets");
    } else {
      assert.equal(code, 0, `clean exit after ${stop}: ${first.stderr}`);
      assert.ok(!existsSync(control()), "control socket removed");
      assert.ok(!existsSync(socket), "vGPU socket removed");
      assert.throws(() => client.getDeviceInfo(), "the attached client was disconnected");
    }
    client.close();

    const second = await startDaemon(state);
    try {
      assert.equal(second.vgpus.get(defined), socket, "the defined vGPU is back on its socket");
      const again = attach(socket);
      const listed = requestDaemon(control(), { cmd: "list" }).vgpus as { uuid: string; state: string }[];
      assert.deepEqual(
        listed.map((v) => [v.uuid, v.state]),
        [[defined, "attached"]],
      );
      again.close();
    } finally {
      second.child.kill("SIGTERM");
      assert.equal((await second.exit).code, 0);
    }
  });
}

test("two daemons on one state dir: the second refuses clearly, the first keeps serving", async () => {
  const first = await startDaemon(state);
  try {
    const r = mgpu(state, ["serve"]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`another mgpu daemon \\(pid ${first.child.pid}\\) is serving ${state}`),
    );
    assert.equal(readFileSync(join(state, "daemon.lock"), "utf8").trim(), String(first.child.pid));
    // The first is untouched: its control socket answers, its vGPU attaches.
    const listed = requestDaemon(control(), { cmd: "list" }).vgpus as { uuid: string }[];
    assert.deepEqual(
      listed.map((v) => v.uuid),
      [defined],
    );
    attach(first.vgpus.get(defined)!).close();
  } finally {
    first.child.kill("SIGTERM");
    assert.equal((await first.exit).code, 0);
  }
});

test("a live vGPU socket of another daemon is refused, a file that is not a socket is left alone", async () => {
  const shared = mkdtempSync(join(tmpdir(), "mgpu-shared-sockets-"));
  const otherState = mkdtempSync(join(tmpdir(), "mgpu-other-state-"));
  const uuid = "5ca1ab1e-0000-4000-8000-000000000001";
  const first = await startDaemon(otherState, ["--socket-dir", shared, "--vgpu", `mgpu-1q:${uuid}`]);
  try {
    const r = mgpu(state, ["serve", "--socket-dir", shared, "--vgpu", `mgpu-1q:${uuid}`]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`${uuid}\\.sock is in use: another server answers on it`));
    attach(first.vgpus.get(uuid)!).close();

    const plain = "5ca1ab1e-0000-4000-8000-000000000002";
    writeFileSync(join(shared, `${plain}.sock`), "not a socket");
    const s = mgpu(state, ["serve", "--socket-dir", shared, "--vgpu", `mgpu-1q:${plain}`]);
    assert.equal(s.status, 1);
    assert.match(s.stderr, /exists and is not a socket; not touching it/);
    assert.equal(readFileSync(join(shared, `${plain}.sock`), "utf8"), "not a socket");
    assert.ok(!existsSync(control()), "the refused daemon removed its control socket");
  } finally {
    first.child.kill("SIGTERM");
    await first.exit;
    rmSync(shared, { recursive: true, force: true });
    rmSync(otherState, { recursive: true, force: true });
  }
});
