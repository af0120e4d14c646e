import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "cli", "main.js");

function demo(...args: string[]) {
  return spawnSync(process.execPath, [cli, "demo", ...args], { encoding: "utf8", timeout: 120_000 });
}

test("mgpu demo: four simulated VMs (mixed memory models), one hostile and contained; table, PNGs, exit 0", () => {
  const out = mkdtempSync(join(tmpdir(), "mgpu-demo-test-"));
  try {
    const r = demo("--seconds", "2", "--hostile", "1", "--out", out);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const rows = r.stdout.split("\n").filter((l) => /^vm\d/.test(l));
    assert.equal(rows.length, 4, r.stdout);
    for (const row of rows) assert.match(row, /\sok$/, row);
    assert.match(rows[0]!, /mgpu-1q\s+kvm/);
    assert.match(rows[1]!, /^vm1 \(hostile\).*mgpu-2q\s+xen/);
    const rejected = (row: string) => Number(row.trim().split(/\s+/).at(-4));
    assert.ok(rejected(rows[1]!) > 0, "the hostile VM's streams were rejected");
    for (const i of [0, 2, 3]) assert.equal(rejected(rows[i]!), 0);
    assert.equal(readdirSync(out).filter((f) => f.endsWith(".png")).length, 4);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("mgpu demo refuses bad options with a clear message", () => {
  for (const [args, message] of [
    [["--seconds", "-3"], /--seconds.*must be a positive number/],
    [["--memory-model", "vmware"], /--memory-model must be kvm, xen or mixed/],
    [["--vms", "0"], /--vms must be 1\.\.64/],
    [["--hostile", "7"], /--hostile names VMs that do not exist/],
    [["--types", "mgpu-9q", "--seconds", "1"], /no vGPU type mgpu-9q/],
  ] as const) {
    const r = demo(...args);
    assert.notEqual(r.status, 0, args.join(" "));
    assert.match(r.stderr, message, args.join(" "));
  }
});
