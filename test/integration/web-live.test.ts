/**
 * The live-display WebSocket the dashboard uses: a subscriber gets the
 * screen's exact pixels (full size) or every fourth pixel (thumbnail), frames
 * only when the screen changes, and state pushes; malformed or hostile
 * requests get an error message and leave the connection and every other
 * subscription working.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { inflateSync } from "node:zlib";
import WebSocket from "ws";
import { pngToFrame } from "../../src/gpu/index.js";
import { type WebDaemon, draw, startWebDaemon } from "../support/web.js";

let web: WebDaemon;

interface LiveFrame {
  uuid: string;
  scale: number;
  width: number;
  height: number;
  seq: number;
  rgba: Buffer;
}

class Live {
  readonly frames: LiveFrame[] = [];
  readonly texts: { type: string; [k: string]: unknown }[] = [];
  private waiters: (() => void)[] = [];
  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data: Buffer, binary: boolean) => {
      if (binary) {
        assert.deepEqual([data[0], data[1]], [1, 1]);
        this.frames.push({
          scale: data.readUInt16LE(2),
          width: data.readUInt16LE(4),
          height: data.readUInt16LE(6),
          seq: data.readUInt32LE(8),
          uuid: data.subarray(12, 48).toString("latin1"),
          rgba: inflateSync(data.subarray(48)),
        });
      } else this.texts.push(JSON.parse(data.toString()) as Live["texts"][number]);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async open(): Promise<Live> {
    const ws = new WebSocket(`${web.url.replace("http", "ws")}/api/v1/live`);
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    return new Live(ws);
  }

  send(m: unknown): void {
    this.ws.send(typeof m === "string" ? m : JSON.stringify(m));
  }

  async until<T>(find: () => T | undefined, ms = 15_000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const found = find();
      if (found !== undefined) return found;
      if (Date.now() > end) throw new Error("timed out waiting on the live socket");
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  }
}

before(async () => {
  web = await startWebDaemon(["mgpu-1q", "mgpu-2q"]);
  await draw(web.daemon.vgpus[0]!.socket);
});
after(() => web.stop());

async function screenshot(uuid: string) {
  return pngToFrame(
    new Uint8Array(await (await fetch(`${web.url}/api/v1/vgpus/${uuid}/screenshot.png`)).arrayBuffer()),
  );
}

test("a subscriber gets the exact pixels, full size and as a thumbnail, and a frame only when the screen changes", async () => {
  const [a] = web.daemon.vgpus;
  const live = await Live.open();
  try {
    live.send({ subscribe: a!.uuid, scale: 1, fps: 30 });
    const full = await live.until(() => live.frames.find((f) => f.scale === 1));
    const host = await screenshot(a!.uuid);
    assert.deepEqual([full.uuid, full.width, full.height], [a!.uuid, host.width, host.height]);
    assert.ok(full.rgba.equals(Buffer.from(host.rgba)), "full-size frame = screenshot");
    live.send({ subscribe: a!.uuid, scale: 4, fps: 30 });
    const thumb = await live.until(() => live.frames.find((f) => f.scale === 4));
    assert.deepEqual([thumb.width, thumb.height], [320, 200]);
    for (const [x, y] of [
      [0, 0],
      [319, 199],
      [100, 50],
    ] as const) {
      const t = (y * 320 + x) * 4;
      const h = (y * 4 * 1280 + x * 4) * 4;
      assert.deepEqual([...thumb.rgba.subarray(t, t + 4)], [...host.rgba.subarray(h, h + 4)], `${x},${y}`);
    }
    // Nothing changes: nothing more comes (a second at up to 30 frames/s).
    const count = live.frames.length;
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(live.frames.length, count, "no frame for an unchanged screen");
    // The guest draws: new frames come, with a higher sequence number.
    await draw(a!.socket, 0.3);
    const next = await live.until(() => live.frames.find((f) => f.scale === 4 && f.seq > thumb.seq));
    assert.ok(next.seq > thumb.seq);
    type State = { uuid: string; mode: { width: number; height: number; enabled: boolean } }[];
    const mode = await live.until(() =>
      live.texts
        .filter((t) => t.type === "state")
        .map((t) => (t.vgpus as State).find((v) => v.uuid === a!.uuid)!.mode)
        .find((m) => m.enabled),
    );
    assert.deepEqual([mode.width, mode.height], [1280, 800]);
  } finally {
    live.ws.close();
  }
});

test("hostile live requests get an error, and the connection keeps working", async () => {
  const [a, b] = web.daemon.vgpus;
  const live = await Live.open();
  try {
    const bad: unknown[] = [
      "not json",
      "null",
      { subscribe: 7 },
      { subscribe: "../../etc/passwd" },
      { subscribe: a!.uuid, scale: 0 },
      { subscribe: a!.uuid, scale: 1.5 },
      { subscribe: a!.uuid, scale: 1e9 },
      { subscribe: a!.uuid, fps: 1000 },
      { subscribe: a!.uuid, fps: -1 },
    ];
    for (const m of bad) live.send(m);
    live.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    const errors = await live.until(() => {
      const e = live.texts.filter((t) => t.type === "error");
      return e.length >= bad.length + 1 ? e : undefined;
    });
    for (const e of errors) assert.equal(e.code, "EINVAL");
    // A subscription to a vGPU that does not exist yields nothing, and harms nothing.
    live.send({ subscribe: "00000000-0000-4000-8000-000000000000", scale: 4 });
    live.send({ subscribe: b!.uuid, scale: 8, fps: 5 });
    const frame = await live.until(() => live.frames.find((f) => f.uuid === b!.uuid));
    assert.deepEqual([frame.width, frame.height], [80, 60]); // display off: a black 640×480, scaled
    assert.ok(!live.frames.some((f) => f.uuid.startsWith("00000000")));
    // Too many subscriptions are refused.
    for (let i = 0; i < 70; i++)
      live.send({ subscribe: `${String(i).padStart(8, "0")}-0000-4000-8000-000000000000` });
    await live.until(() => live.texts.find((t) => t.type === "error" && /at most/.test(String(t.error))));
  } finally {
    live.ws.close();
  }
});

test("mgpu serve fails with a clear message when the HTTP port is taken", async () => {
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, "127.0.0.1", r));
  const port = (blocker.address() as { port: number }).port;
  try {
    const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");
    const r = spawnSync(
      process.execPath,
      [cli, "--state-dir", join(web.dir, "other"), "serve", "--http", `127.0.0.1:${port}`],
      {
        encoding: "utf8",
        timeout: 30_000,
      },
    );
    assert.equal(r.status, 1);
    assert.match(r.stderr, /the web server did not start: .*EADDRINUSE/);
  } finally {
    blocker.close();
  }
});
