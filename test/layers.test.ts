/**
 * The layering rules of docs/ARCHITECTURE.md, checked against the code: every
 * import in src/ (tests beside the code excepted) points only to the folders its
 * layer may use, and koffi — the one door to libc — is imported only by sys/.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const src = join(root, "src");

/** Each layer and the layers it may import (itself always). Keep in step with docs/ARCHITECTURE.md. */
export const mayImport: Record<string, readonly string[]> = {
  base: [],
  abi: ["base"],
  sys: ["base"],
  "vfio-user": ["sys", "base"],
  pci: ["vfio-user", "sys", "base"],
  gpu: ["abi", "sys", "base"],
  hypervisor: ["pci", "base"],
  mediator: ["gpu", "pci", "hypervisor", "abi", "sys", "base"],
  guest: ["abi", "base"],
  vmm: ["guest", "gpu", "vfio-user", "sys", "abi", "base"],
  samples: ["pci", "vfio-user", "sys", "base"],
  manager: ["mediator", "hypervisor", "gpu", "pci", "vfio-user", "abi", "sys", "base"],
  web: ["manager", "mediator", "hypervisor", "gpu", "pci", "vfio-user", "abi", "sys", "base"],
  cli: [
    "web",
    "manager",
    "vmm",
    "samples",
    "mediator",
    "hypervisor",
    "guest",
    "gpu",
    "pci",
    "vfio-user",
    "abi",
    "sys",
    "base",
  ],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sources(path);
    return e.name.endsWith(".ts") && !e.name.endsWith(".test.ts") ? [path] : [];
  });
}

const importPattern = /^\s*(?:import|export)\b[^"']*?\bfrom\s*["']([^"']+)["']/gm;

test("every import in src/ follows the layer table; koffi only in sys/", () => {
  const violations: string[] = [];
  const layers = readdirSync(src, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name);
  for (const layer of layers) {
    assert.ok(layer in mayImport, `src/${layer}/ is not in the layer table`);
  }
  for (const file of sources(src)) {
    const layer = relative(src, file).split("/")[0]!;
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(importPattern)) {
      const spec = m[1]!;
      if (spec === "koffi" && layer !== "sys") violations.push(`${relative(root, file)} imports koffi`);
      if (!spec.startsWith(".")) continue;
      const target = relative(src, resolve(dirname(file), spec)).split("/")[0]!;
      if (target !== layer && !mayImport[layer]!.includes(target))
        violations.push(`${relative(root, file)} (${layer}) imports ${spec} (${target})`);
    }
  }
  assert.deepEqual(violations, []);
});
