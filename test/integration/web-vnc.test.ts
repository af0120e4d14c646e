/**
 * The VNC consoles: a real viewer from Debian (vncsnapshot, RFB 3.3, raw and
 * zlib) takes a frame that matches the host screenshot (it writes JPEG, so
 * within JPEG's error, and far from a shifted image); an RFB 3.8 session
 * written out here checks the pixels exactly, that keyboard, pointer and
 * clipboard input is accepted and ignored, and that an incremental update
 * carries what the guest drew next.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { type Socket, connect } from "node:net";
import { join } from "node:path";
import { constants as zlibConstants, inflateSync } from "node:zlib";
import jpeg from "jpeg-js";
import { type Frame, pngToFrame } from "../../src/gpu/index.js";
import { type WebDaemon, draw, json, startWebDaemon } from "../support/web.js";

const VNCSNAPSHOT = "/usr/bin/vncsnapshot";
let web: WebDaemon;
let vgpu: { uuid: string; socket: string };
let port: number;

function viewerMissing(): string | undefined {
  if (existsSync(VNCSNAPSHOT)) return undefined;
  const reason = `no ${VNCSNAPSHOT} (run scripts/install-viewers.sh)`;
  if (process.env.CI === "true") throw new Error(reason);
  return reason;
}

async function screenshot(): Promise<Frame> {
  const r = await fetch(`${web.url}/api/v1/vgpus/${vgpu.uuid}/screenshot.png`);
  return pngToFrame(new Uint8Array(await r.arrayBuffer()));
}

before(async () => {
  web = await startWebDaemon(["mgpu-1q"], ["--vnc", "127.0.0.1:0"]);
  vgpu = web.daemon.vgpus[0]!;
  await draw(vgpu.socket);
  const listed = (await json(`${web.url}/api/v1/vgpus/${vgpu.uuid}`)).body as { vnc?: string };
  assert.match(listed.vnc ?? "", /^127\.0\.0\.1:\d+$/);
  port = Number(listed.vnc!.split(":")[1]);
});
after(() => web.stop());

/** Mean absolute difference per channel between a viewer's RGB(A) image and the screenshot, shifted by dx. */
function meanError(shown: Uint8Array, host: Frame, dx = 0): number {
  let sum = 0;
  let n = 0;
  for (let y = 0; y < host.height; y += 2)
    for (let x = 0; x + dx < host.width; x += 2) {
      const a = (y * host.width + x) * 4;
      const b = (y * host.width + x + dx) * 4;
      for (let c = 0; c < 3; c++) sum += Math.abs(shown[a + c]! - host.rgba[b + c]!);
      n += 3;
    }
  return sum / n;
}

for (const encoding of ["raw", "zlib"]) {
  test(
    `vncsnapshot (${encoding}) takes a frame that matches the screenshot`,
    { skip: viewerMissing() },
    async () => {
      const out = join(web.dir, `snap-${encoding}.jpg`);
      const r = spawnSync(
        VNCSNAPSHOT,
        ["-quiet", "-encodings", encoding, "-quality", "100", `127.0.0.1::${port}`, out],
        {
          encoding: "utf8",
          timeout: 30_000,
        },
      );
      assert.equal(r.status, 0, r.stderr);
      // vncsnapshot's JPEG says (Adobe marker, transform 0) that it holds RGB, not YCbCr.
      const shown = jpeg.decode(readFileSync(out), {
        useTArray: true,
        formatAsRGBA: true,
        colorTransform: false,
      });
      const host = await screenshot();
      assert.deepEqual([shown.width, shown.height], [host.width, host.height]);
      const error = meanError(shown.data, host);
      const shifted = meanError(shown.data, host, 8);
      assert.ok(error < 1, `mean error ${error.toFixed(2)} (JPEG at quality 100)`);
      assert.ok(
        shifted > 10 * error,
        `a shifted image is far off: ${shifted.toFixed(2)} vs ${error.toFixed(2)}`,
      );
    },
  );
}

/** A small RFB 3.8 viewer: just enough to read updates exactly. */
class Viewer {
  private data = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private constructor(private readonly socket: Socket) {
    socket.on("data", (d: Buffer) => {
      this.data = Buffer.concat([this.data, d]);
      this.wake?.();
    });
  }

  static async open(p: number): Promise<Viewer> {
    const s = connect(p, "127.0.0.1");
    await new Promise((resolve, reject) => s.once("connect", resolve).once("error", reject));
    return new Viewer(s);
  }

  async read(n: number): Promise<Buffer> {
    while (this.data.length < n) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`VNC read of ${n} bytes timed out`)), 20_000);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const out = this.data.subarray(0, n);
    this.data = this.data.subarray(n);
    return out;
  }

  write(b: Buffer | number[]): void {
    this.socket.write(Buffer.isBuffer(b) ? b : Buffer.from(b));
  }

  close(): void {
    this.socket.destroy();
  }
}

function request(incremental: boolean, w: number, h: number): number[] {
  return [3, incremental ? 1 : 0, 0, 0, 0, 0, w >> 8, w & 0xff, h >> 8, h & 0xff];
}

function encodings(list: number[]): Buffer {
  const b = Buffer.alloc(4 + 4 * list.length);
  b.writeUInt8(2, 0);
  b.writeUInt16BE(list.length, 2);
  list.forEach((e, i) => b.writeInt32BE(e, 4 + 4 * i));
  return b;
}

test("an RFB 3.8 session gets the exact pixels (zlib), ignores input, and follows with incremental updates (raw)", async () => {
  const v = await Viewer.open(port);
  try {
    assert.equal((await v.read(12)).toString("latin1"), "RFB 003.008\n");
    v.write(Buffer.from("RFB 003.008\n", "latin1"));
    assert.deepEqual([...(await v.read(2))], [1, 1]); // one security type: None
    v.write([1]);
    assert.equal((await v.read(4)).readUInt32BE(0), 0); // SecurityResult OK
    v.write([1]); // ClientInit, shared
    const init = await v.read(24);
    const [w, h] = [init.readUInt16BE(0), init.readUInt16BE(2)];
    assert.deepEqual([w, h, init[4], init[7]], [1280, 800, 32, 1]); // 32 bpp true colour
    const name = (await v.read(init.readUInt32BE(20))).toString();
    assert.match(name, new RegExp(vgpu.uuid));
    // Input a vGPU has no device for: read and ignored.
    v.write([4, 1, 0, 0, 0, 0, 0xff, 0x0d]); // key down Return
    v.write([5, 1, 0, 10, 0, 20]); // pointer button 1 at 10,20
    const cut = Buffer.alloc(8 + 5);
    cut.writeUInt8(6, 0);
    cut.writeUInt32BE(5, 4);
    cut.write("hello", 8);
    v.write(cut);
    v.write(encodings([6, -223]));
    v.write(request(false, w, h));
    const head = await v.read(4);
    assert.deepEqual([head[0], head.readUInt16BE(2)], [0, 1]);
    const rect = await v.read(12);
    assert.deepEqual(
      [
        rect.readUInt16BE(0),
        rect.readUInt16BE(2),
        rect.readUInt16BE(4),
        rect.readUInt16BE(6),
        rect.readInt32BE(8),
      ],
      [0, 0, w, h, 6],
    );
    const z = await v.read((await v.read(4)).readUInt32BE(0));
    const pixels = inflateSync(z, { finishFlush: zlibConstants.Z_SYNC_FLUSH });
    const host = await screenshot();
    assert.equal(pixels.length, w * h * 4);
    // B, G, R, 0 per pixel (the server's format) against the screenshot's R, G, B, A.
    let differing = 0;
    for (let i = 0; i < w * h; i++)
      if (
        pixels[i * 4] !== host.rgba[i * 4 + 2] ||
        pixels[i * 4 + 1] !== host.rgba[i * 4 + 1] ||
        pixels[i * 4 + 2] !== host.rgba[i * 4]
      )
        differing++;
    assert.equal(differing, 0, "pixels that differ from the screenshot");
    // Incremental: nothing changed yet, so nothing comes; the guest draws, and the changes arrive.
    v.write(encodings([0]));
    v.write(request(true, w, h));
    await draw(vgpu.socket, 0.3);
    const next = await screenshot();
    const shown = Buffer.from(pixels);
    const matches = () => {
      for (let i = 0; i < w * h; i++)
        if (shown[i * 4] !== next.rgba[i * 4 + 2] || shown[i * 4 + 2] !== next.rgba[i * 4]) return false;
      return true;
    };
    let updates = 0;
    for (; updates < 100; updates++) {
      const count = (await v.read(4)).readUInt16BE(2);
      for (let n = 0; n < count; n++) {
        const r2 = await v.read(12);
        const [x, y, rw, rh] = [
          r2.readUInt16BE(0),
          r2.readUInt16BE(2),
          r2.readUInt16BE(4),
          r2.readUInt16BE(6),
        ];
        assert.equal(r2.readInt32BE(8), 0);
        assert.ok(rw > 0 && rh > 0 && rh < h + 1);
        const raw = await v.read(rw * rh * 4);
        for (let row = 0; row < rh; row++)
          raw.copy(shown, ((y + row) * w + x) * 4, row * rw * 4, (row + 1) * rw * 4);
      }
      if (matches()) break;
      v.write(request(true, w, h)); // the display differs from what we hold: an update must follow
    }
    differing = matches() ? 0 : 1;
    assert.equal(differing, 0, "after the incremental update");
  } finally {
    v.close();
  }
});

test("a viewer that speaks nonsense is dropped; the console keeps serving others", async () => {
  const bad = await Viewer.open(port);
  await bad.read(12);
  bad.write(Buffer.from("HTTP/1.1 GET\n", "latin1"));
  const good = await Viewer.open(port);
  try {
    assert.equal((await good.read(12)).toString("latin1"), "RFB 003.008\n");
    good.write(Buffer.from("RFB 003.003\n", "latin1"));
    assert.equal((await good.read(4)).readUInt32BE(0), 1); // 3.3: the server names type None
    good.write([1]);
    const init = await good.read(24);
    assert.equal(init.readUInt16BE(0), 1280);
  } finally {
    bad.close();
    good.close();
  }
});
