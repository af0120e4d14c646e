/**
 * `npm run fuzz -- [--messages N] [--seed S]`: the vfio-user fuzzer outside the
 * test suite, against a server in its own process. Prints the figures (and
 * writes them to bench-results/fuzz.json); exits 1 on the first violation.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startFixtureServer } from "../support/server-process.js";
import { FuzzFailure, runFuzz } from "./vfio-user-fuzzer.js";

const { values } = parseArgs({
  options: { messages: { type: "string", default: "1000000" }, seed: { type: "string", default: "24301" } },
});
const messages = Number(values.messages);
const seed = Number(values.seed);
if (!Number.isSafeInteger(messages) || messages <= 0 || !Number.isSafeInteger(seed)) {
  console.error("usage: npm run fuzz -- [--messages N] [--seed S]");
  process.exit(2);
}

const server = await startFixtureServer("serve-two.js");
let code = 0;
try {
  const result = runFuzz(
    {
      socketPath: server.socketPath,
      bystanderPath: `${server.socketPath}-b`,
      fdCount: server.fdCount,
      alive: () => server.child.exitCode === null && server.child.signalCode === null,
    },
    {
      messages,
      seed,
      progressEvery: 100_000,
      onProgress: (done, r) =>
        console.error(
          `${done} messages, ${r.errors} errno replies, ${r.closes} closes, bystander worst ${r.worstBystanderMs.toFixed(2)} ms`,
        ),
    },
  );
  const figures = {
    ...result,
    seed,
    crashes: 0,
    messagesPerSecond: Math.round(result.messages / (result.durationMs / 1000)),
  };
  console.log(JSON.stringify(figures, null, 2));
  const dir = process.env.MGPU_BENCH_DIR ?? "bench-results";
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "fuzz.json"),
    JSON.stringify({ ...figures, date: new Date().toISOString() }, null, 2) + "\n",
  );
} catch (e) {
  console.error(e instanceof FuzzFailure ? `FAILED: ${e.message}` : e);
  console.error(server.stderr().split("\n").slice(-20).join("\n"));
  code = 1;
} finally {
  await server.stop();
}
process.exit(code);
