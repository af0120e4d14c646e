/**
 * Management like mdevctl: persistent definitions (schema-checked, atomic,
 * broken files reported and kept), and a running daemon driven by the CLI:
 * types, create/remove, start/stop of defined vGPUs, list, qemu-args,
 * screenshot — with clear messages and non-zero exits for misuse.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DefinitionStore } from "../../src/manager/definitions.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const cli = join(root, "src", "cli", "main.js");
let state: string;

function mgpu(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, "--state-dir", state, ...args], {
    encoding: "utf8",
    timeout: 30_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(...args: string[]): string {
  const r = mgpu(...args);
  assert.equal(r.status, 0, `mgpu ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** Exit 1: it did not work. */
function fails(pattern: RegExp, ...args: string[]): void {
  const r = mgpu(...args);
  assert.equal(r.status, 1, `mgpu ${args.join(" ")} should fail: ${r.stderr}`);
  assert.match(r.stderr, pattern);
}

/** Exit 2: it was asked wrongly. */
function misused(pattern: RegExp, ...args: string[]): void {
  const r = mgpu(...args);
  assert.equal(r.status, 2, `mgpu ${args.join(" ")} is a usage error: ${r.stderr}`);
  assert.match(r.stderr, pattern);
}

before(() => {
  state = mkdtempSync(join(tmpdir(), "mgpu-state-"));
});
after(() => rmSync(state, { recursive: true, force: true }));

test("definitions: define, list, modify, undefine, with schema checks and --json", () => {
  const uuid = ok("define", "--type", "mgpu-2q", "--name", "desk", "--autostart").trim();
  assert.match(uuid, /^[0-9a-f-]{36}$/);
  const listed = JSON.parse(ok("list", "--defined", "--json")) as {
    uuid: string;
    type: string;
    autostart: boolean;
  }[];
  assert.deepEqual(listed, [{ uuid, type: "mgpu-2q", autostart: true, name: "desk" }]);
  ok("modify", uuid, "--no-autostart", "--type", "mgpu-1q");
  assert.match(ok("list", "--defined"), new RegExp(`${uuid}\\s+mgpu-1q\\s+no\\s+desk`));
  fails(/already defined/, "define", "--type", "mgpu-1q", "--uuid", uuid);
  fails(/not defined/, "undefine", "00000000-0000-4000-8000-000000000000");
  ok("undefine", uuid);
  assert.equal(ok("list", "--defined", "--json").trim(), "[]");
});

test("a broken definition file is reported by name, skipped, and never deleted", () => {
  const good = ok("define", "--type", "mgpu-1q").trim();
  const dir = join(state, "definitions");
  const broken = join(dir, "11111111-1111-4111-8111-111111111111.json");
  writeFileSync(broken, '{"uuid": "11111111-1111-4111-8111-111111111111", "type": 5');
  const wrongShape = join(dir, "22222222-2222-4222-8222-222222222222.json");
  writeFileSync(
    wrongShape,
    JSON.stringify({
      uuid: "22222222-2222-4222-8222-222222222222",
      type: "mgpu-1q",
      extra: 1,
      autostart: "yes",
    }),
  );
  const r = mgpu("list", "--defined", "--json");
  assert.equal(r.status, 0);
  assert.deepEqual(
    (JSON.parse(r.stdout) as { uuid: string; broken?: string }[]).map((d) => [
      d.uuid,
      d.broken !== undefined,
    ]),
    [
      [good, false],
      ["11111111-1111-4111-8111-111111111111", true],
      ["22222222-2222-4222-8222-222222222222", true],
    ],
  );
  assert.match(r.stderr, /broken definition .*11111111-1111-4111-8111-111111111111\.json/);
  assert.match(
    r.stderr,
    /broken definition .*22222222-2222-4222-8222-222222222222\.json: .*autostart must be boolean/,
  );
  assert.ok(existsSync(broken) && existsSync(wrongShape), "broken files stay where they are");
  rmSync(broken);
  rmSync(wrongShape);
  ok("undefine", good);
});

test("kill -9 in the middle of rewriting a definition leaves the old or the new file, never a torn one", async () => {
  const uuid = ok("define", "--type", "mgpu-1q").trim();
  const store = new DefinitionStore(state);
  for (let round = 0; round < 20; round++) {
    const child = spawn(
      process.execPath,
      [join(root, "test", "fixtures", "definition-writer.js"), state, uuid],
      { stdio: ["ignore", "pipe", "ignore"] },
    );
    await new Promise((r) => child.stdout!.once("data", r));
    await new Promise((r) => setTimeout(r, 5 + ((round * 7) % 23)));
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
    const { definitions, broken } = store.load();
    assert.deepEqual(broken, [], `round ${round}`);
    const d = definitions.find((x) => x.uuid === uuid);
    assert.ok(d, `round ${round}: the definition survives`);
    assert.match(d.name ?? "", /^round-\d+$|^$/);
  }
  // Interrupted writes may leave temporary files; they are not definitions.
  for (const f of readdirSync(join(state, "definitions")))
    if (!f.endsWith(".json")) rmSync(join(state, "definitions", f));
  ok("undefine", uuid);
});

test("the daemon: autostart, create/remove, start/stop, list, qemu-args, screenshot, types", async () => {
  fails(/no mgpu daemon at .*control\.sock/, "list");
  const defined = ok("define", "--type", "mgpu-1q", "--autostart").trim();
  const stopped = ok("define", "--type", "mgpu-1q").trim();
  const daemon: ChildProcess = spawn(process.execPath, [cli, "--state-dir", state, "serve"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise((r) => daemon.once("exit", r));
  try {
    await new Promise((r) => daemon.stdout!.once("data", r));
    let running = JSON.parse(ok("list", "--json")) as { uuid: string; defined: boolean }[];
    assert.deepEqual(
      running.map((v) => [v.uuid, v.defined]),
      [[defined, true]],
      "autostart",
    );
    const before = (JSON.parse(ok("types", "--json")) as { name: string; availableInstances: number }[]).find(
      (t) => t.name === "mgpu-4q",
    )!;
    const created = JSON.parse(ok("create", "--type", "mgpu-4q", "--json")) as {
      uuid: string;
      socket: string;
    };
    assert.ok(existsSync(created.socket));
    const afterCreate = (
      JSON.parse(ok("types", "--json")) as { name: string; availableInstances: number }[]
    ).find((t) => t.name === "mgpu-4q")!;
    assert.equal(afterCreate.availableInstances, before.availableInstances - 1);
    assert.match(ok("qemu-args", created.uuid), /vfio-user-pci.*\.sock/);
    const png = join(state, "shot.png");
    fails(/has no display mode set/, "screenshot", created.uuid, png);
    assert.ok(!existsSync(png), "no file for a display without a mode");
    ok("start", stopped);
    running = JSON.parse(ok("list", "--json")) as { uuid: string; defined: boolean }[];
    assert.equal(running.length, 3);
    ok("stop", stopped);
    ok("remove", created.uuid);
    assert.deepEqual(
      (JSON.parse(ok("list", "--json")) as { uuid: string }[]).map((v) => v.uuid),
      [defined],
    );
    assert.ok(!existsSync(created.socket), "its socket is gone");
    fails(/not running/, "remove", created.uuid);
    misused(/no vGPU type nonsense/, "create", "--type", "nonsense");
    fails(/not defined/, "start", "00000000-0000-4000-8000-000000000000");
    // Fill the parent with 4q vGPUs: the one that does not fit is refused, cleanly.
    const room = (JSON.parse(ok("types", "--json")) as { name: string; availableInstances: number }[]).find(
      (t) => t.name === "mgpu-4q",
    )!;
    for (let i = 0; i < room.availableInstances; i++) ok("create", "--type", "mgpu-4q");
    fails(/no local memory left for mgpu-4q/, "create", "--type", "mgpu-4q");
    assert.equal((JSON.parse(ok("list", "--json")) as unknown[]).length, 1 + room.availableInstances);
  } finally {
    daemon.kill("SIGKILL");
    await exited;
  }
});

test("each validation error exits 2 with a message: type, UUID, name, --vgpu, --log-level, usage", () => {
  const uuid = ok("define", "--type", "mgpu-1q").trim();
  const before = ok("list", "--defined", "--json");
  misused(/no vGPU type nosuchtype \(known: mgpu-1q, mgpu-2q, mgpu-4q\)/, "define", "--type", "nosuchtype");
  misused(/no vGPU type alsobogus/, "modify", uuid, "--type", "alsobogus");
  misused(/must be a lower-case UUID/, "define", "--type", "mgpu-1q", "--uuid", "nope");
  misused(/must be a lower-case UUID/, "define", "--type", "mgpu-1q", "--uuid", uuid.toUpperCase());
  misused(
    /\/name must be 1 to 128 printable characters/,
    "define",
    "--type",
    "mgpu-1q",
    "--name",
    "a\u0007b",
  );
  misused(/\/name must be 1 to 128 printable characters/, "modify", uuid, "--name", "x".repeat(129));
  misused(
    /--vgpu mgpu-1q:not-a-uuid: the UUID must be a lower-case UUID/,
    "serve",
    "--vgpu",
    "mgpu-1q:not-a-uuid",
  );
  misused(/no vGPU type mgpu-9q/, "serve", "--vgpu", "mgpu-9q");
  misused(
    /--log-level.*must be one of fatal, error, warn, info, debug, trace, silent, not "loud"/,
    "serve",
    "--log-level",
    "loud",
  );
  const env = spawnSync(process.execPath, [cli, "--state-dir", state, "serve"], {
    encoding: "utf8",
    env: { ...process.env, MGPU_LOG_LEVEL: "loud" },
  });
  assert.equal(env.status, 2, env.stderr);
  assert.match(env.stderr, /MGPU_LOG_LEVEL must be one of fatal, error/);
  misused(/unknown command 'frobnicate'/, "frobnicate");
  misused(/unknown option '--bogus'/, "list", "--bogus");
  misused(/missing required argument 'uuid'/, "remove");
  misused(/cannot be used with/, "serve", "--socket-path=/tmp/x.sock", "--fd=3");
  // Nothing of the refused ones reached the disk; the good one is unchanged.
  assert.equal(ok("list", "--defined", "--json"), before);
  const version = mgpu("--version");
  assert.equal(version.status, 0);
  assert.match(version.stdout.trim(), /^\d+\.\d+\.\d+$/);
  ok("undefine", uuid);
});

test("a broken definition is shown, replaced only with --force, removed by undefine", () => {
  const uuid = "33333333-3333-4333-8333-333333333333";
  const file = join(state, "definitions", `${uuid}.json`);
  const bytes =
    '{"uuid":"33333333-3333-4333-8333-333333333333","type":"mgpu-1q","autostart":true,"name":"keep me"';
  writeFileSync(file, bytes);
  const listed = JSON.parse(ok("list", "--defined", "--json")) as {
    uuid: string;
    broken?: string;
    file?: string;
  }[];
  const shown = listed.filter((d) => d.uuid === uuid);
  assert.deepEqual(
    shown.map((d) => [d.uuid, d.file]),
    [[uuid, file]],
  );
  assert.match(shown[0]!.broken!, /not JSON/);
  assert.match(ok("list", "--defined"), new RegExp(`${uuid}\\s+\\?\\s+\\?\\s+broken: .*not JSON`));
  fails(
    /a broken definition is in the way .*define --force.*undefine/,
    "define",
    "--type",
    "mgpu-2q",
    "--uuid",
    uuid,
  );
  fails(/definition is broken .*not JSON/, "modify", uuid, "--autostart");
  assert.equal(readFileSync(file, "utf8"), bytes, "refused commands leave the file as it was");
  ok("define", "--type", "mgpu-2q", "--uuid", uuid, "--force");
  assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), { uuid, type: "mgpu-2q", autostart: false });
  writeFileSync(file, "garbage");
  ok("undefine", uuid);
  assert.ok(!existsSync(file), "undefine removes a broken one");
});

test("a FIFO, a symlink and an oversized file in the definitions folder are skipped with a warning", async () => {
  const dir = join(state, "definitions");
  const fifo = join(dir, "44444444-4444-4444-8444-444444444444.json");
  assert.equal(spawnSync("mkfifo", [fifo]).status, 0, "mkfifo");
  const target = join(state, "elsewhere.json");
  writeFileSync(
    target,
    JSON.stringify({ uuid: "55555555-5555-4555-8555-555555555555", type: "mgpu-1q", autostart: true }),
  );
  symlinkSync(target, join(dir, "55555555-5555-4555-8555-555555555555.json"));
  writeFileSync(join(dir, "66666666-6666-4666-8666-666666666666.json"), " ".repeat(70_000));
  const good = ok("define", "--type", "mgpu-1q", "--autostart").trim();
  try {
    const r = mgpu("list", "--defined");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /44444444-4444-4444-8444-444444444444\.json: is not a regular file/);
    assert.match(r.stderr, /55555555-5555-4555-8555-555555555555\.json: is a symbolic link \(not followed\)/);
    assert.match(r.stderr, /66666666-6666-4666-8666-666666666666\.json: is 70000 bytes/);
    // The daemon comes up (a FIFO no longer holds it), warns, and starts the good one.
    const daemon: ChildProcess = spawn(process.execPath, [cli, "--state-dir", state, "serve"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    daemon.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise((resolve) => daemon.once("exit", resolve));
    try {
      let stdout = "";
      await new Promise<void>((resolve, reject) => {
        daemon.stdout!.on("data", (b: Buffer) => {
          stdout += b.toString();
          if (stdout.includes("control socket")) resolve();
        });
        void exited.then(() => reject(new Error(`serve exited: ${stderr}`)));
      });
      assert.match(stdout, new RegExp(`vGPU ${good} `));
      assert.match(
        stderr,
        /skipping a broken vGPU definition.*44444444|44444444.*skipping a broken vGPU definition/,
      );
    } finally {
      daemon.kill("SIGTERM");
      await exited;
    }
  } finally {
    for (const f of readdirSync(dir)) if (!f.startsWith(good)) rmSync(join(dir, f));
    rmSync(target);
    ok("undefine", good);
  }
});

test("XDG_STATE_HOME is honoured when neither --state-dir nor MGPU_STATE_DIR is given", () => {
  const xdg = mkdtempSync(join(tmpdir(), "mgpu-xdg-"));
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, XDG_STATE_HOME: xdg };
    delete env.MGPU_STATE_DIR;
    const r = spawnSync(process.execPath, [cli, "define", "--type", "mgpu-1q"], { encoding: "utf8", env });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(xdg, "mediated-gpu", "definitions", `${r.stdout.trim()}.json`)));
  } finally {
    rmSync(xdg, { recursive: true, force: true });
  }
});
