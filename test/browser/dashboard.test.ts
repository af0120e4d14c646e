/**
 * The dashboard in a real browser (Debian's Chromium through Playwright)
 * against a running daemon: it lists the daemon's vGPUs, a live display shows
 * exactly the pixels the guest drew (canvas readback against the host's
 * screenshot), and the create and remove buttons change the cards.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Page } from "playwright-core";
import { pngToFrame } from "../../src/gpu/index.js";
import { type Browser, browserMissing, launchBrowser } from "../support/browser.js";
import { type WebDaemon, draw, json, startWebDaemon } from "../support/web.js";

// The functions given to page.evaluate run in the page; these are the few DOM shapes they touch.
interface Canvas {
  width: number;
  height: number;
  dataset: Record<string, string | undefined>;
  getContext(kind: "2d"): {
    getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray };
  };
}
declare const document: {
  querySelector(selector: string): Canvas | null;
  querySelectorAll(selector: string): { length: number };
};

const skip = browserMissing();
let web: WebDaemon;
let browser: Browser;

before(async () => {
  if (skip) return;
  web = await startWebDaemon(["mgpu-1q", "mgpu-2q"]);
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await web?.stop();
});

async function cardUuids(page: Page): Promise<string[]> {
  return page.$$eval(".card", (nodes) =>
    nodes.map((n) => (n as unknown as Canvas).dataset.uuid ?? "").sort(),
  );
}

test("the dashboard lists the running daemon's vGPUs, with mode and counters", { skip }, async () => {
  const page = await browser.context.newPage();
  try {
    await page.goto(web.url);
    await page.waitForFunction(() => document.querySelectorAll(".card").length === 2);
    const expected = web.daemon.vgpus.map((v) => v.uuid).sort();
    assert.deepEqual(await cardUuids(page), expected);
    const first = page.locator(`.card[data-uuid="${expected[0]}"]`);
    assert.match((await first.locator(".mode").textContent()) ?? "", /display off/);
    await first.locator('dd[data-counter="traps"]').waitFor();
    assert.equal(await page.locator("#status").textContent(), "live");
  } finally {
    await page.close();
  }
});

test(
  "a live display shows exactly the pixels the guest drew (canvas readback = host screenshot)",
  { skip },
  async () => {
    const vgpu = web.daemon.vgpus[1]!;
    await draw(vgpu.socket);
    const shot = await fetch(`${web.url}/api/v1/vgpus/${vgpu.uuid}/screenshot.png`);
    const host = pngToFrame(new Uint8Array(await shot.arrayBuffer()));
    assert.deepEqual([host.width, host.height], [1280, 800]);
    const page = await browser.context.newPage();
    try {
      await page.goto(`${web.url}/?scale=1`);
      const canvas = `.card[data-uuid="${vgpu.uuid}"] canvas.display`;
      await page.waitForFunction(
        (sel) => {
          const c = document.querySelector(sel);
          return c?.dataset.seq !== undefined && c.width === 1280 && c.dataset.scale === "1";
        },
        canvas,
        { timeout: 20_000 },
      );
      const b64 = await page.$eval(canvas, (c) => {
        const el = c as unknown as Canvas;
        const data = el.getContext("2d")!.getImageData(0, 0, el.width, el.height).data;
        let s = "";
        for (let i = 0; i < data.length; i += 0x8000)
          s += String.fromCharCode(...data.subarray(i, i + 0x8000));
        return btoa(s);
      });
      const shown = Buffer.from(b64, "base64");
      assert.equal(shown.length, host.rgba.length);
      let differing = 0;
      for (let i = 0; i < shown.length; i++) if (shown[i] !== host.rgba[i]) differing++;
      assert.equal(differing, 0, "canvas bytes that differ from the screenshot");
      assert.ok(new Set(new Uint32Array(host.rgba.buffer)).size > 10, "a desktop, not a blank screen");
      // A thumbnail is the screenshot's every fourth pixel of every fourth line.
      await page.goto(`${web.url}/?scale=4`);
      await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.scale === "4", canvas);
      const thumb = await page.$eval(canvas, (c) => {
        const el = c as unknown as Canvas;
        return {
          w: el.width,
          h: el.height,
          px: Array.from(el.getContext("2d")!.getImageData(7, 5, 1, 1).data),
        };
      });
      assert.deepEqual([thumb.w, thumb.h], [320, 200]);
      const o = (5 * 4 * 1280 + 7 * 4) * 4;
      assert.deepEqual(thumb.px, Array.from(host.rgba.subarray(o, o + 4)));
    } finally {
      await page.close();
    }
  },
);

test("the create button makes a new card appear; remove takes it away", { skip }, async () => {
  const page = await browser.context.newPage();
  try {
    await page.goto(web.url);
    await page.waitForFunction(() => document.querySelectorAll(".card").length === 2);
    await page.waitForFunction(() => document.querySelectorAll("#type option").length === 3);
    await page.selectOption("#type", "mgpu-4q");
    await page.click("#create-button");
    await page.waitForFunction(() => document.querySelectorAll(".card").length === 3, undefined, {
      timeout: 10_000,
    });
    const listed = (await json(`${web.url}/api/v1/vgpus`)).body as { uuid: string; type: string }[];
    const created = listed.find((v) => !web.daemon.vgpus.some((x) => x.uuid === v.uuid))!;
    assert.equal(created.type, "mgpu-4q");
    assert.deepEqual(await cardUuids(page), listed.map((v) => v.uuid).sort());
    const card = page.locator(`.card[data-uuid="${created.uuid}"]`);
    assert.equal(await card.locator(".type").textContent(), "mgpu-4q");
    await card.locator("button.remove").click();
    await page.waitForFunction(() => document.querySelectorAll(".card").length === 2, undefined, {
      timeout: 10_000,
    });
    const after = (await json(`${web.url}/api/v1/vgpus`)).body as { uuid: string }[];
    assert.ok(!after.some((v) => v.uuid === created.uuid));
  } finally {
    await page.close();
  }
});

test("mgpu demo --dashboard shows the demo's VMs animating in the dashboard", { skip }, async () => {
  const { spawn } = await import("node:child_process");
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { dirname, join } = await import("node:path");
  const { fileURLToPath } = await import("node:url");
  const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");
  const out = mkdtempSync(join(tmpdir(), "mgpu-demo-dash-"));
  const demo = spawn(
    process.execPath,
    [cli, "demo", "--seconds", "6", "--memory-model", "kvm", "--dashboard", "127.0.0.1:0", "--out", out],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stdout = "";
  demo.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<number | null>((resolve) => demo.once("exit", resolve));
  const page = await browser.context.newPage();
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no dashboard line: ${stdout}`)), 30_000);
      demo.stdout.on("data", () => {
        const m = /dashboard: (http:\/\/\S+)/.exec(stdout);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
    });
    await page.goto(url);
    await page.waitForFunction(() => document.querySelectorAll(".card").length === 4, undefined, {
      timeout: 20_000,
    });
    // Every display moves: each canvas gets more than one frame while the VMs render.
    await page.waitForFunction(
      () =>
        Array.from({ length: 4 }, (_, i) =>
          document.querySelector(`.card:nth-child(${i + 1}) canvas.display`),
        ).every((c) => Number(c?.dataset.seq ?? 0) > 1),
      undefined,
      { timeout: 20_000 },
    );
    assert.equal(await exited, 0, stdout);
    assert.match(stdout, /vm3 .* ok/);
  } finally {
    await page.close();
    demo.kill("SIGKILL");
    rmSync(out, { recursive: true, force: true });
  }
});
