/**
 * A vGPU a VM is using is not the operator's to disturb (issue 14): `mgpu probe`
 * of a vGPU under load (a simulated VM rendering frames) leaves the guest's
 * frames pixel-exact and its error register 0 — the probe is a read-only
 * observer; a second VMM can look but not map, reset or write; `list` shows the
 * state; `remove`/`stop` of an attached vGPU are refused unless --force, which
 * sends the REQ interrupt and waits (bounded) for the VMM to let go.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { pngToFrame } from "../../src/gpu/index.js";
import { nativeDesktopFrame } from "../../src/cli/demo.js";
import { runVms } from "../../src/vmm/sim/run.js";
import { Client, Errno, VfioUserError } from "../../src/vfio-user/index.js";
import { quietLogger } from "../../src/base/index.js";
import { requestDaemon } from "../../src/manager/control.js";
import { cli, mgpu, startDaemon, type RunningDaemon } from "../support/daemon-cli.js";

const fixture = join(cli, "..", "..", "..", "test", "fixtures", "req-vmm.js");
const loaded = "b0a70000-0000-4000-8000-000000000001";
const spare = "b0a70000-0000-4000-8000-000000000002";
let state: string;
let daemon: RunningDaemon;

before(async () => {
  state = mkdtempSync(join(tmpdir(), "mgpu-busy-"));
  daemon = await startDaemon(state, ["--vgpu", `mgpu-2q:${loaded}`, "--vgpu", `mgpu-1q:${spare}`]);
});
after(async () => {
  daemon.child.kill("SIGTERM");
  await daemon.exit;
  rmSync(state, { recursive: true, force: true });
});

const control = () => join(state, "control.sock");
const list = () =>
  requestDaemon(control(), { cmd: "list" }).vgpus as { uuid: string; state: string; error: number }[];

function probeAsync(socket: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, "probe", socket], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.once("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

/** `mgpu --state-dir STATE ARGS…` in the background (the daemon is busy meanwhile). */
function mgpuAsync(args: string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [cli, "--state-dir", state, ...args], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    c.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    c.once("exit", (status) => resolve({ status, stderr }));
  });
}

test("probe of a vGPU under load: the guest's frames stay pixel-exact, its error register 0", async () => {
  const socket = daemon.vgpus.get(loaded)!;
  const probes: Promise<{ code: number | null; stdout: string; stderr: string }>[] = [];
  let frames = 0;
  const [result] = await runVms([{ name: "vm", socket, memoryModel: "kvm" }], {
    seconds: 4,
    onProgress: (_name, n) => {
      // Probe again and again while the VM renders.
      if (n - frames >= 5 || frames === 0) probes.push(probeAsync(socket));
      frames = n;
    },
  });
  const done = await Promise.all(probes);
  assert.ok(done.length >= 3, `probed ${done.length} times during the run`);
  for (const p of done) {
    assert.equal(p.code, 0, p.stderr);
    assert.match(p.stdout, /Device 1234:1111 \(rev 02\)/);
    assert.match(p.stdout, /Region 0: Memory/);
  }
  assert.equal(result!.error, undefined, `the VM saw no error: ${result!.error}`);
  assert.ok(result!.frames > 10, `frames rendered: ${result!.frames}`);
  const v = list().find((x) => x.uuid === loaded)!;
  assert.equal(v.error, 0, "the vGPU's engine error register is 0");
  assert.notEqual(v.state, "error");
  const shot = requestDaemon(control(), { cmd: "screenshot", uuid: loaded });
  const rgba = pngToFrame(Buffer.from(String(shot.png), "base64")).rgba;
  assert.ok(
    Buffer.from(rgba).equals(Buffer.from(nativeDesktopFrame(result!.lastSeed))),
    "last frame pixel-exact",
  );
});

test("a second VMM on an owned vGPU is a read-only observer: it can look, not map, reset or write", () => {
  const socket = daemon.vgpus.get(spare)!;
  const owner = Client.connect(socket, { logger: quietLogger });
  const observer = Client.connect(socket, { logger: quietLogger });
  try {
    assert.equal(list().find((x) => x.uuid === spare)!.state, "attached");
    assert.equal(observer.getDeviceInfo().numRegions, 9);
    const bar0 = observer.getRegionInfo(0);
    assert.equal(bar0.fd, undefined, "no fd for an observer: it cannot map the owner's memory");
    const id = new Uint8Array(4);
    observer.regionRead(7, 0, id);
    assert.deepEqual(Array.from(id), [0x34, 0x12, 0x11, 0x11], "config space readable");
    const ebusy = (fn: () => void, what: string) =>
      assert.throws(fn, (e) => e instanceof VfioUserError && e.errno === Errno.EBUSY, what);
    ebusy(() => observer.reset(), "DEVICE_RESET");
    ebusy(() => observer.regionWrite(7, 4, new Uint8Array([0, 0])), "config write");
    ebusy(() => observer.regionRead(2, 0, new Uint8Array(4)), "BAR2 read (has side effects)");
    ebusy(() => observer.dmaMap({ flags: 3, offset: 0n, address: 0n, size: 4096n }), "DMA_MAP");
    // The owner is untouched, and an observer leaving does not detach it.
    observer.close();
    assert.equal(owner.getDeviceInfo().numRegions, 9);
    assert.equal(list().find((x) => x.uuid === spare)!.state, "attached");
  } finally {
    owner.close();
  }
});

function startVmm(socket: string, mode?: string): Promise<{ child: ChildProcess; lines: string[] }> {
  const child = spawn(process.execPath, [fixture, socket, ...(mode ? [mode] : [])], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines: string[] = [];
  const rl = createInterface({ input: child.stdout! });
  return new Promise((resolve) =>
    rl.on("line", (l) => {
      lines.push(l);
      if (l === "attached") resolve({ child, lines });
    }),
  );
}

async function waitState(uuid: string, want: string): Promise<void> {
  for (let i = 0; i < 100 && list().find((x) => x.uuid === uuid)?.state !== want; i++)
    await new Promise((r) => setTimeout(r, 20));
  assert.equal(list().find((x) => x.uuid === uuid)?.state, want);
}

test("remove/stop of an attached vGPU are refused; --force asks the VMM to release it (REQ) and removes it", async () => {
  const uuid = "b0a70000-0000-4000-8000-000000000003";
  assert.equal(mgpu(state, ["create", "--type", "mgpu-1q", "--uuid", uuid]).status, 0);
  const socket = join(state, "vgpus", `${uuid}.sock`);
  const vmm = await startVmm(socket);
  await waitState(uuid, "attached");
  for (const cmd of ["remove", "stop"]) {
    const r = mgpu(state, [cmd, uuid]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /is attached to a VMM; detach it first, or use --force/);
  }
  assert.equal(list().find((x) => x.uuid === uuid)?.state, "attached", "still there, still attached");
  const exited = new Promise((r) => vmm.child.once("exit", r));
  const forced = await mgpuAsync(["remove", "--force", uuid]);
  assert.equal(forced.status, 0, forced.stderr);
  await exited;
  assert.deepEqual(vmm.lines, ["attached", "release requested", "released"]);
  assert.equal(
    list().find((x) => x.uuid === uuid),
    undefined,
    "removed",
  );
});

test("--force on a VMM that ignores REQ: disconnected after the bounded wait, the vGPU removed", async () => {
  const uuid = "b0a70000-0000-4000-8000-000000000004";
  assert.equal(mgpu(state, ["create", "--type", "mgpu-1q", "--uuid", uuid]).status, 0);
  const vmm = await startVmm(join(state, "vgpus", `${uuid}.sock`), "--ignore-req");
  await waitState(uuid, "attached");
  const r = await mgpuAsync(["stop", "--force", uuid]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /did not release .* in time; it was disconnected/);
  assert.ok(vmm.lines.includes("release requested"));
  assert.equal(
    list().find((x) => x.uuid === uuid),
    undefined,
  );
  vmm.child.kill("SIGKILL");
});
