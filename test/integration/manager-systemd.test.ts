/**
 * Running the daemon the usual way (issue 13): the systemd unit and the
 * vfio-user backend description installed by scripts/install-service.sh (into
 * a staging DESTDIR here), `Type=notify` honoured (READY=1 once serving,
 * STOPPING=1 on SIGTERM, over $NOTIFY_SOCKET), and the single-vGPU backend
 * program with the spec's `--socket-path` / `--fd` conventions.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DatagramSocket, closeFd, listenUnix } from "../../src/sys/index.js";
import { Client } from "../../src/vfio-user/index.js";
import { quietLogger } from "../../src/base/index.js";
import { startDaemon } from "../support/daemon-cli.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
let dest: string;

before(() => {
  dest = mkdtempSync(join(tmpdir(), "mgpu-destdir-"));
  const r = spawnSync("bash", [join(root, "scripts", "install-service.sh")], {
    env: { ...process.env, DESTDIR: dest, PREFIX: "/usr/local" },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
});
after(() => rmSync(dest, { recursive: true, force: true }));

test("install-service.sh installs the unit, the backend description and the commands", (t) => {
  const unit = readFileSync(join(dest, "etc/systemd/system/mediated-gpu.service"), "utf8");
  assert.match(unit, /^Type=notify$/m);
  assert.match(unit, /^ExecStart=\/usr\/local\/bin\/mgpu --state-dir=\/var\/lib\/mediated-gpu serve/m);
  assert.match(unit, /^StateDirectoryMode=0700$/m);
  const description = JSON.parse(
    readFileSync(join(dest, "usr/share/vfio-user/50-mediated-gpu.json"), "utf8"),
  ) as {
    binary: string;
    type: string;
  };
  assert.equal(description.binary, "/usr/local/bin/mgpu-vgpu");
  for (const bin of ["mgpu", "mgpu-vgpu"]) assert.ok(statSync(join(dest, "usr/local/bin", bin)).mode & 0o111);
  const version = spawnSync(join(dest, "usr/local/bin/mgpu"), ["--version"], { encoding: "utf8" });
  assert.equal(version.status, 0, version.stderr);
  assert.match(version.stdout, /^\d+\.\d+\.\d+$/m);
  // systemd's own check of the unit, pointed at the staged command, where systemd is installed.
  const analyze = spawnSync("systemd-analyze", ["--version"]);
  if (analyze.status !== 0) {
    t.diagnostic("systemd-analyze not installed: unit syntax checked by the assertions above only");
    return;
  }
  const staged = join(dest, "mediated-gpu.service");
  writeFileSync(staged, unit.replace("/usr/local/bin/mgpu", join(dest, "usr/local/bin/mgpu")));
  const verify = spawnSync("systemd-analyze", ["verify", staged], { encoding: "utf8" });
  assert.equal(verify.status, 0, verify.stderr);
});

test("Type=notify: READY=1 once serving, STOPPING=1 on SIGTERM, then exit 0", async () => {
  const state = mkdtempSync(join(tmpdir(), "mgpu-notify-"));
  const notify = DatagramSocket.bind(join(state, "notify.sock"));
  try {
    const d = await startDaemon(state, ["--vgpu", "mgpu-1q"], {
      env: { NOTIFY_SOCKET: join(state, "notify.sock") },
    });
    let ready: Buffer | null = null;
    for (let i = 0; i < 100 && !(ready = notify.receive()); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(ready?.toString(), "READY=1");
    d.child.kill("SIGTERM");
    assert.equal((await d.exit).code, 0, d.stderr);
    assert.equal(notify.receive()?.toString(), "STOPPING=1");
  } finally {
    notify.close();
    rmSync(state, { recursive: true, force: true });
  }
});

/** Starts the staged mgpu-vgpu; resolves on its "vGPU … on …" line. */
function backend(
  args: string[],
  extraFd?: number,
): Promise<{ child: ChildProcess; exit: Promise<number | null> }> {
  const child = spawn(join(dest, "usr/local/bin/mgpu-vgpu"), args, {
    stdio: ["ignore", "pipe", "pipe", ...(extraFd !== undefined ? [extraFd] : [])],
  });
  const exit = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.once("data", () => resolve({ child, exit }));
    void exit.then((code) => reject(new Error(`mgpu-vgpu exited ${code}: ${err}`)));
  });
}

test("mgpu-vgpu --socket-path=PATH and --fd=N serve one vGPU, SIGTERM removes the socket", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mgpu-backend-"));
  try {
    const path = join(dir, "gpu.sock");
    const b = await backend([`--socket-path=${path}`, "--vgpu", "mgpu-2q"]);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const c = Client.connect(path, { logger: quietLogger });
    assert.equal(c.getDeviceInfo().numRegions, 9);
    c.close();
    b.child.kill("SIGTERM");
    assert.equal(await b.exit, 0);
    assert.ok(!existsSync(path), "socket removed on SIGTERM");

    // --fd: the parent made the listening socket and hands it over as fd 3.
    const fdPath = join(dir, "by-fd.sock");
    const listening = listenUnix(fdPath);
    const f = await backend(["--fd=3"], listening);
    closeFd(listening);
    const c2 = Client.connect(fdPath, { logger: quietLogger });
    assert.equal(c2.getDeviceInfo().numRegions, 9);
    c2.close();
    f.child.kill("SIGTERM");
    assert.equal(await f.exit, 0);

    const usage = spawnSync(join(dest, "usr/local/bin/mgpu-vgpu"), [], { encoding: "utf8" });
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /usage: mgpu-vgpu --socket-path=PATH \| --fd=N/);
    const both = spawnSync(join(dest, "usr/local/bin/mgpu-vgpu"), [`--socket-path=${path}`, "--fd=3"], {
      encoding: "utf8",
    });
    assert.equal(both.status, 2, both.stderr);
    assert.match(both.stderr, /cannot be used with/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
