/**
 * The HTTP API over real HTTP on loopback, against a real daemon process:
 * the CLI's operations, its error codes with fitting statuses, schema checks
 * that refuse bad requests without touching anything, and the screenshot PNG
 * equal to the control channel's.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { pngToFrame } from "../../src/gpu/index.js";
import { type WebDaemon, draw, json, startWebDaemon } from "../support/web.js";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");
let web: WebDaemon;
let first: { uuid: string; socket: string };

interface Listed {
  uuid: string;
  type: string;
  defined: boolean;
  stats: { traps: number };
  display: { width: number; height: number; enabled: boolean };
}

before(async () => {
  web = await startWebDaemon(["mgpu-1q"]);
  first = web.daemon.vgpus[0]!;
});
after(() => web.stop());

test("types, list and one vGPU, as the CLI sees them", async () => {
  const types = await json(`${web.url}/api/v1/types`);
  assert.equal(types.status, 200);
  const names = (types.body as { name: string; availableInstances: number }[]).map((t) => t.name);
  assert.deepEqual(names, ["mgpu-1q", "mgpu-2q", "mgpu-4q"]);
  const list = await json(`${web.url}/api/v1/vgpus`);
  assert.equal(list.status, 200);
  const control = (await web.daemon.request({ cmd: "list" })).vgpus as Listed[];
  assert.deepEqual(
    (list.body as Listed[]).map((v) => [v.uuid, v.type, v.defined]),
    control.map((v) => [v.uuid, v.type, v.defined]),
  );
  const one = await json(`${web.url}/api/v1/vgpus/${first.uuid}`);
  assert.equal(one.status, 200);
  assert.equal((one.body as Listed).uuid, first.uuid);
  const stats = await json(`${web.url}/api/v1/vgpus/${first.uuid}/stats`);
  assert.equal(stats.status, 200);
  assert.equal(typeof (stats.body as Listed).stats.traps, "number");
  const qemu = await json(`${web.url}/api/v1/vgpus/${first.uuid}/qemu-args`);
  assert.ok((qemu.body as { qemu: string[] }).qemu.some((a) => a.includes(first.socket)));
});

test("create and remove, with the CLI's error codes", async () => {
  const created = await json(`${web.url}/api/v1/vgpus`, { method: "POST", body: { type: "mgpu-2q" } });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const { uuid } = created.body as { uuid: string; socket: string };
  const again = await json(`${web.url}/api/v1/vgpus`, { method: "POST", body: { type: "mgpu-1q", uuid } });
  assert.deepEqual([again.status, (again.body as { code: string }).code], [409, "EEXIST"]);
  const noType = await json(`${web.url}/api/v1/vgpus`, { method: "POST", body: { type: "mgpu-9q" } });
  assert.deepEqual([noType.status, (noType.body as { code: string }).code], [400, "ENOTYPE"]);
  assert.match((noType.body as { error: string }).error, /no vGPU type mgpu-9q/);
  // Fill the parent with 4q vGPUs until it says no room.
  const made: string[] = [];
  for (;;) {
    const r = await json(`${web.url}/api/v1/vgpus`, { method: "POST", body: { type: "mgpu-4q" } });
    if (r.status !== 201) {
      assert.deepEqual([r.status, (r.body as { code: string }).code], [409, "ENOSPC"]);
      break;
    }
    made.push((r.body as { uuid: string }).uuid);
    assert.ok(made.length < 64);
  }
  for (const u of [...made, uuid]) {
    const r = await fetch(`${web.url}/api/v1/vgpus/${u}`, { method: "DELETE" });
    assert.equal(r.status, 204);
  }
  const gone = await json(`${web.url}/api/v1/vgpus/${uuid}`, { method: "DELETE" });
  assert.deepEqual([gone.status, (gone.body as { code: string }).code], [404, "ENOENT"]);
  const list = (await json(`${web.url}/api/v1/vgpus`)).body as Listed[];
  assert.deepEqual(
    list.map((v) => v.uuid),
    [first.uuid],
  );
});

test("bad requests are refused by schema, and leave every vGPU as it was", async () => {
  const before = (await json(`${web.url}/api/v1/vgpus`)).body as Listed[];
  const cases: [string, string, unknown, number][] = [
    ["POST", "/api/v1/vgpus", { type: "mgpu-1q", extra: 1 }, 400],
    ["POST", "/api/v1/vgpus", { type: 7 }, 400],
    ["POST", "/api/v1/vgpus", { type: "bad type!" }, 400],
    ["POST", "/api/v1/vgpus", { type: "mgpu-1q", uuid: "nope" }, 400],
    ["POST", "/api/v1/vgpus", "not an object", 400],
    ["GET", "/api/v1/vgpus/not-a-uuid", undefined, 400],
    ["POST", "/api/v1/definitions", { type: "mgpu-1q", autostart: "yes" }, 400],
    ["GET", "/api/v1/nothing", undefined, 404],
  ];
  for (const [method, path, body, status] of cases) {
    const r = await json(`${web.url}${path}`, { method, body });
    assert.equal(r.status, status, `${method} ${path} ${JSON.stringify(body)}`);
    const code = (r.body as { code: string }).code;
    assert.equal(code, status === 404 ? "ENOENT" : "EINVAL", `${method} ${path}`);
  }
  const raw = await fetch(`${web.url}/api/v1/vgpus`, {
    method: "POST",
    body: "{ not json",
    headers: { "content-type": "application/json" },
  });
  assert.equal(raw.status, 400);
  assert.equal(((await raw.json()) as { code: string }).code, "EINVAL");
  const after = (await json(`${web.url}/api/v1/vgpus`)).body as Listed[];
  assert.deepEqual(
    after.map((v) => v.uuid),
    before.map((v) => v.uuid),
  );
});

test("definitions: define, modify, start, stop, undefine; broken files reported and kept", async () => {
  const d = await json(`${web.url}/api/v1/definitions`, {
    method: "POST",
    body: { type: "mgpu-1q", name: "desk" },
  });
  assert.equal(d.status, 201, JSON.stringify(d.body));
  const { uuid } = d.body as { uuid: string };
  const dup = await json(`${web.url}/api/v1/definitions`, {
    method: "POST",
    body: { type: "mgpu-1q", uuid },
  });
  assert.deepEqual([dup.status, (dup.body as { code: string }).code], [409, "EEXIST"]);
  const m = await json(`${web.url}/api/v1/definitions/${uuid}`, {
    method: "PATCH",
    body: { type: "mgpu-2q", autostart: true },
  });
  assert.deepEqual(m.body, { uuid, type: "mgpu-2q", autostart: true, name: "desk" });
  const brokenFile = join(web.dir, "definitions", "11111111-1111-4111-8111-111111111111.json");
  writeFileSync(brokenFile, "{ broken");
  const listed = (await json(`${web.url}/api/v1/definitions`)).body as {
    definitions: { uuid: string }[];
    broken: { file: string }[];
  };
  assert.deepEqual(
    listed.definitions.map((x) => x.uuid),
    [uuid],
  );
  assert.deepEqual(
    listed.broken.map((b) => b.file),
    [brokenFile],
  );
  assert.equal(readFileSync(brokenFile, "utf8"), "{ broken");
  const started = await json(`${web.url}/api/v1/definitions/${uuid}/start`, { method: "POST" });
  assert.equal(started.status, 201, JSON.stringify(started.body));
  const running = (await json(`${web.url}/api/v1/vgpus/${uuid}`)).body as Listed;
  assert.deepEqual([running.type, running.defined], ["mgpu-2q", true]);
  const twice = await json(`${web.url}/api/v1/definitions/${uuid}/start`, { method: "POST" });
  assert.deepEqual([twice.status, (twice.body as { code: string }).code], [409, "EEXIST"]);
  assert.equal((await fetch(`${web.url}/api/v1/vgpus/${uuid}/stop`, { method: "POST" })).status, 204);
  assert.equal((await fetch(`${web.url}/api/v1/definitions/${uuid}`, { method: "DELETE" })).status, 204);
  const none = await json(`${web.url}/api/v1/definitions/${uuid}`, { method: "DELETE" });
  assert.deepEqual([none.status, (none.body as { code: string }).code], [404, "ENOENT"]);
  const notDefined = await json(`${web.url}/api/v1/definitions/${uuid}/start`, { method: "POST" });
  assert.deepEqual([notDefined.status, (notDefined.body as { code: string }).code], [404, "ENOENT"]);
});

test("the screenshot PNG has the pixels a VM drew, the same as the control channel's", async () => {
  await draw(first.socket);
  const r = await fetch(`${web.url}/api/v1/vgpus/${first.uuid}/screenshot.png`);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "image/png");
  const http = pngToFrame(new Uint8Array(await r.arrayBuffer()));
  const control = pngToFrame(await web.daemon.screenshot(first.uuid));
  assert.deepEqual([http.width, http.height], [1280, 800]);
  assert.deepEqual([http.width, http.height], [control.width, control.height]);
  assert.ok(Buffer.from(http.rgba).equals(Buffer.from(control.rgba)), "same pixels");
  assert.ok(new Set(new Uint32Array(http.rgba.buffer)).size > 10, "a desktop, not a blank screen");
});

test("mgpu serve refuses a malformed --http address and --vnc without --http", () => {
  for (const [args, message] of [
    [["--http", "localhost:99999"], /--http must be PORT or HOST:PORT/],
    [["--http", "nope"], /--http must be PORT or HOST:PORT/],
    [["--vnc", "5900"], /--vnc needs --http/],
  ] as const) {
    const r = spawnSync(process.execPath, [cli, "--state-dir", web.dir, "serve", ...args], {
      encoding: "utf8",
      timeout: 20_000,
    });
    assert.equal(r.status, 2, `${args.join(" ")} is a usage error`);
    assert.match(r.stderr, message);
  }
});

test("cross-site requests (a foreign Origin, or a Host that is not loopback) are refused", async () => {
  const { request } = await import("node:http");
  const call = (
    headers: Record<string, string>,
    method = "POST",
    path = `/api/v1/vgpus/${first.uuid}/stop`,
  ) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const u = new URL(web.url);
      const r = request({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
        let body = "";
        res.on("data", (d: Buffer) => (body += d.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      r.on("error", reject);
      r.end();
    });
  const foreign = await call({ origin: "http://evil.example" });
  assert.equal(foreign.status, 403);
  assert.equal((JSON.parse(foreign.body) as { code: string }).code, "EPERM");
  const rebound = await call({ host: "evil.example" }, "GET", "/api/v1/vgpus");
  assert.equal(rebound.status, 403);
  // The vGPU is still running; our own origin is welcome.
  const own = await call({ origin: web.url }, "GET", `/api/v1/vgpus/${first.uuid}`);
  assert.equal(own.status, 200);
});
