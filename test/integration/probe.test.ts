import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { startFixtureServer } from "../support/server-process.js";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");

function mgpu(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("mgpu probe describes our sample device like lspci -vv", async () => {
  const server = await startFixtureServer("serve-sample.js");
  try {
    const r = mgpu("probe", server.socketPath);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Device 1234:4d47 \(rev 01\)/);
    assert.match(r.stdout, /Region 0: Memory \(32-bit, non-prefetchable\) at 00000000 \[size=4K\] \[rw-\]/);
    assert.match(
      r.stdout,
      /Region 2: Memory \(32-bit, prefetchable\) .*\[size=1M\] \[rwm\]\n\t\tmmap area: offset 0x0 size 1M/,
    );
    assert.match(r.stdout, /Capabilities: \[40\] MSI: enabled=- vectors=1/);
    assert.match(r.stdout, /IRQ MSI: count=1 \[eventfd\]/);
    assert.match(r.stdout, /Migration: VFIO migration v2 \(STOP_COPY\)/);
    const json = JSON.parse(mgpu("probe", "--json", server.socketPath).stdout) as {
      config: { vendorId: number };
    };
    assert.equal(json.config.vendorId, 0x1234);
  } finally {
    await server.stop();
  }
});

test("mgpu probe reports a missing socket with a clear message and a non-zero exit", () => {
  const r = mgpu("probe", join(tmpdir(), "mgpu-no-such.sock"));
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^mgpu: connect failed: ENOENT/);
});

// libvfio-user's gpio sample is a reference server we do not ship: built by hand
// outside the repo (see the README's interop section) and found here if present.
const gpioSample =
  process.env.MGPU_LIBVFIO_USER_GPIO ?? "/work/interop/libvfio-user/build/samples/gpio-pci-idio-16";

test("mgpu probe works against libvfio-user's gpio-pci-idio-16 sample", async (t) => {
  if (!existsSync(gpioSample)) {
    t.skip(`libvfio-user's gpio sample not built at ${gpioSample} (set MGPU_LIBVFIO_USER_GPIO)`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "mgpu-gpio-"));
  const sock = join(dir, "gpio.sock");
  const child = spawn(gpioSample, [sock], { stdio: "ignore" });
  try {
    for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    const r = mgpu("probe", sock);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Device 494f:0dc8/);
    assert.match(r.stdout, /Region 2: I\/O ports at 00000000 \[size=256\] \[rw-\]/);
  } finally {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
