import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");

test("mgpu demo renders on every vGPU, prints the table, writes a PNG each and exits 0", () => {
  const out = mkdtempSync(join(tmpdir(), "mgpu-demo-test-"));
  try {
    const r = spawnSync(
      process.execPath,
      [cli, "demo", "--seconds", "1", "--types", "mgpu-1q,mgpu-2q", "--out", out],
      {
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const rows = r.stdout.split("\n").filter((l) => /^[0-9a-f]{8}\s+mgpu-/.test(l));
    assert.equal(rows.length, 2, r.stdout);
    for (const row of rows) assert.match(row, /\sok\s*$/);
    assert.equal(readdirSync(out).filter((f) => f.endsWith(".png")).length, 2);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("mgpu demo refuses a bad duration with a clear message", () => {
  const r = spawnSync(process.execPath, [cli, "demo", "--seconds", "-3"], {
    encoding: "utf8",
    timeout: 20_000,
  });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--seconds must be a positive number/);
});
