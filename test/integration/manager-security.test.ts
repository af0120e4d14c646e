/**
 * The control socket is closed to strangers and to hostile requests (issue 14):
 * a traversal "uuid" is refused before it reaches a path (nothing created or
 * deleted); under umask 000 the state directory is 0700 and every socket 0600;
 * another user's connection is refused by its SO_PEERCRED even if the modes
 * were opened; a request naming a file for the daemon to write is refused; a
 * control client that stops reading does not delay a vGPU's trap.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "../../src/vfio-user/index.js";
import { GuestDriver } from "../../src/guest/index.js";
import { ClientBus } from "../../src/vmm/client-bus.js";
import { quietLogger } from "../../src/base/index.js";
import { requestDaemon } from "../../src/manager/control.js";
import { mgpu, startDaemon, type RunningDaemon } from "../support/daemon-cli.js";

const isRoot = process.getuid?.() === 0;
let base: string;
let state: string;
let daemon: RunningDaemon;
const uuid = "5ec00000-0000-4000-8000-000000000001";

before(async () => {
  base = mkdtempSync(join(tmpdir(), "mgpu-security-"));
  state = join(base, "state"); // created by the daemon, under umask 000
  daemon = await startDaemon(state, ["--vgpu", `mgpu-1q:${uuid}`], { umask: 0 });
});
after(async () => {
  daemon.child.kill("SIGTERM");
  await daemon.exit;
  rmSync(base, { recursive: true, force: true });
});
const control = () => join(state, "control.sock");
const mode = (p: string) => statSync(p).mode & 0o777;

test("under umask 000: state dir and its folders 0700, sockets and the lock 0600, definitions 0600", () => {
  for (const dir of [state, join(state, "definitions"), join(state, "vgpus")])
    assert.equal(mode(dir), 0o700, dir);
  assert.equal(mode(control()), 0o600);
  assert.equal(mode(daemon.vgpus.get(uuid)!), 0o600);
  assert.equal(mode(join(state, "daemon.lock")), 0o600);
  const r = spawnSync("/bin/sh", ["-c", 'umask 000 && exec "$@"', "sh", process.execPath, ...["--version"]]);
  assert.equal(r.status, 0);
  const defined = spawnSync(
    "/bin/sh",
    [
      "-c",
      'umask 000 && exec "$@"',
      "sh",
      process.execPath,
      join(import.meta.dirname, "..", "..", "src", "cli", "main.js"),
      "--state-dir",
      state,
      "define",
      "--type",
      "mgpu-1q",
    ],
    { encoding: "utf8" },
  );
  assert.equal(defined.status, 0, defined.stderr);
  assert.equal(mode(join(state, "definitions", `${defined.stdout.trim()}.json`)), 0o600);
  assert.equal(mgpu(state, ["undefine", defined.stdout.trim()]).status, 0);
});

test("a traversal uuid is refused before it touches a path: nothing created, nothing deleted", () => {
  const victim = join(base, "x.sock");
  writeFileSync(victim, "precious");
  const before = readdirSync(base).sort();
  const traversal = `../../x`;
  for (const cmd of ["create", "start", "remove", "stop", "qemu-args", "screenshot", "checksum"]) {
    const reply = requestDaemon(control(), {
      cmd,
      uuid: traversal,
      ...(cmd === "create" ? { type: "mgpu-1q" } : {}),
    });
    assert.equal(reply.code, "EINVAL", `${cmd}: ${JSON.stringify(reply)}`);
    assert.match(String(reply.error), /uuid must match pattern/);
  }
  const cli = mgpu(state, ["create", "--type", "mgpu-1q", "--uuid", traversal]);
  assert.equal(cli.status, 2, cli.stderr);
  assert.match(cli.stderr, /must be a lower-case UUID/);
  assert.equal(mgpu(state, ["undefine", traversal]).status, 2);
  assert.equal(readFileSync(victim, "utf8"), "precious", "the file is still there, unchanged");
  assert.deepEqual(readdirSync(base).sort(), before, "nothing created beside it");
  assert.deepEqual(readdirSync(join(state, "vgpus")), [`${uuid}.sock`]);
});

test("screenshots come back as bytes: a request naming a file for the daemon is refused", () => {
  const target = join(base, "overwrite-me.conf");
  writeFileSync(target, "key=value\n");
  const reply = requestDaemon(control(), { cmd: "screenshot", uuid, path: target });
  assert.equal(reply.code, "EINVAL");
  assert.match(String(reply.error), /unexpected field path/);
  assert.equal(readFileSync(target, "utf8"), "key=value\n");
  // No mode set yet: a clear error, not a 1×1 picture.
  const none = requestDaemon(control(), { cmd: "screenshot", uuid });
  assert.equal(none.code, "ENODISPLAY");
  const out = join(base, "shot.png");
  const r = mgpu(state, ["screenshot", uuid, out]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /has no display mode set/);
  assert.ok(!existsSync(out));
});

test("another user's connection is refused by its credentials, even with the modes opened", async (t) => {
  if (!isRoot) {
    t.skip("needs root to connect as another user (setpriv)");
    return;
  }
  // Open the door on purpose: only the peer check is left.
  chmodSync(base, 0o755);
  chmodSync(state, 0o755);
  chmodSync(control(), 0o666);
  try {
    const script = `
      const s = require("node:net").createConnection(${JSON.stringify(control())});
      let got = "";
      s.on("connect", () => s.write(JSON.stringify({ cmd: "list" }) + "\\n"));
      s.on("data", (d) => (got += d));
      s.on("close", () => { console.log(got ? "answered" : "closed"); process.exit(0); });
      s.on("error", (e) => { console.log(!got && ["EPIPE", "ECONNRESET"].includes(e.code) ? "closed" : "error " + e.code); process.exit(0); });
      setTimeout(() => { console.log("no answer"); process.exit(0); }, 5000);`;
    const r = spawnSync(
      "/usr/bin/setpriv",
      ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e", script],
      { encoding: "utf8", timeout: 20_000 },
    );
    assert.equal(r.stdout.trim(), "closed", r.stderr);
    for (let i = 0; i < 100 && !/another user refused/.test(daemon.stderr); i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.match(daemon.stderr, /control connection from another user refused.*|"uid":65534/);
    // The owner still gets in.
    assert.ok(Array.isArray(requestDaemon(control(), { cmd: "list" }).vgpus));
  } finally {
    chmodSync(control(), 0o600);
    chmodSync(state, 0o700);
  }
});

test("a control client that stops reading does not delay a vGPU's trap", async (t) => {
  const client = Client.connect(daemon.vgpus.get(uuid)!, { logger: quietLogger });
  const bus = new ClientBus(client);
  new GuestDriver(bus).init();
  // Thousands of requests, replies never read: they back up in the socket.
  const stalled = createConnection(control());
  await new Promise((r) => stalled.once("connect", r));
  stalled.pause();
  // ~80 KB of requests (they fit in the socket buffers), megabytes of replies.
  stalled.write((JSON.stringify({ cmd: "stats" }) + "\n").repeat(5000));
  await new Promise((r) => setTimeout(r, 300));
  let worst = 0;
  const until = Date.now() + 2000;
  let reads = 0;
  while (Date.now() < until) {
    const t0 = performance.now();
    bus.mmioRead(2, 0x2010, 4);
    worst = Math.max(worst, performance.now() - t0);
    reads++;
  }
  assert.ok(reads > 100, `${reads} trapped reads in 2 s`);
  assert.ok(worst < 1000, `worst trap ${worst.toFixed(1)} ms while a control client does not read`);
  t.diagnostic(`${reads} trapped reads in 2 s, worst ${worst.toFixed(2)} ms`);
  // Other control clients are served meanwhile.
  assert.ok(Array.isArray(requestDaemon(control(), { cmd: "list" }).vgpus));
  stalled.destroy();
  client.close();
});

test("--socket-gid: the group may enter the directories (0710) and connect to 0660 sockets", async (t) => {
  if (!isRoot) {
    t.skip("needs root to give files to another group and connect as its member (setpriv)");
    return;
  }
  const groupBase = mkdtempSync(join(tmpdir(), "mgpu-group-"));
  chmodSync(groupBase, 0o755);
  const groupState = join(groupBase, "state");
  const d = await startDaemon(groupState, ["--socket-gid", "65534", "--vgpu", "mgpu-1q"], { umask: 0 });
  try {
    for (const dir of [groupState, join(groupState, "vgpus")]) {
      assert.equal(mode(dir), 0o710, dir);
      assert.equal(statSync(dir).gid, 65534);
    }
    assert.equal(mode(join(groupState, "definitions")), 0o700, "definitions stay private");
    const sockets = [join(groupState, "control.sock"), ...d.vgpus.values()];
    for (const s of sockets) {
      assert.equal(mode(s), 0o660, s);
      assert.equal(statSync(s).gid, 65534);
    }
    // A member of the group (not the owner, not root) is let in by the peer check.
    const script = `
      const s = require("node:net").createConnection(${JSON.stringify(join(groupState, "control.sock"))});
      let got = "";
      s.on("connect", () => s.write(JSON.stringify({ cmd: "list" }) + "\\n"));
      s.on("data", (b) => { got += b; if (got.includes("\\n")) { console.log(JSON.parse(got).vgpus.length); process.exit(0); } });
      s.on("error", (e) => { console.log("error " + e.code); process.exit(0); });
      setTimeout(() => { console.log("no answer"); process.exit(0); }, 5000);`;
    const r = spawnSync(
      "/usr/bin/setpriv",
      ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, "-e", script],
      { encoding: "utf8", timeout: 20_000 },
    );
    assert.equal(r.stdout.trim(), "1", r.stderr);
  } finally {
    d.child.kill("SIGTERM");
    await d.exit;
    rmSync(groupBase, { recursive: true, force: true });
  }
});
