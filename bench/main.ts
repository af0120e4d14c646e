/**
 * `npm run bench -- [name...]`: runs the named benchmarks (all if none), prints a
 * table for each and writes bench-results/<name>.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type BenchReport, formatTable } from "./report.js";

type Bench = () => Promise<BenchReport>;

const benches: Record<string, () => Promise<Bench>> = {
  "vfio-user": async () => (await import("./vfio-user.js")).run,
  gpu: async () => (await import("./gpu.js")).run,
  mediation: async () => (await import("./mediation.js")).run,
  scale: async () => (await import("./scale.js")).run,
  guest: async () => (await import("./guest.js")).run,
  dashboard: async () => (await import("./dashboard.js")).run,
  "protocol-isolation": async () => (await import("./protocol-isolation.js")).run,
  daemon: async () => (await import("./daemon.js")).run,
  isolation: async () => (await import("./isolation.js")).run,
};

async function main(): Promise<void> {
  const names = process.argv.slice(2);
  const unknown = names.filter((n) => !(n in benches));
  if (unknown.length > 0) {
    console.error(`unknown benchmark(s): ${unknown.join(", ")}; known: ${Object.keys(benches).join(", ")}`);
    process.exit(2);
  }
  const outDir = process.env.MGPU_BENCH_DIR ?? "bench-results";
  mkdirSync(outDir, { recursive: true });
  for (const name of names.length > 0 ? names : Object.keys(benches)) {
    const report = await (await benches[name]!())();
    console.log(formatTable(report));
    const file = join(outDir, `${name}.json`);
    writeFileSync(file, JSON.stringify({ ...report, date: new Date().toISOString() }, null, 2) + "\n");
    console.log(`(written to ${file})\n`);
  }
}

await main();
