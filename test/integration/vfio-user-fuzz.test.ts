/**
 * Hostile input: 100,000 mutated messages (MGPU_FUZZ_COUNT to change it)
 * against a live server serving two devices from one loop; the rules are in
 * test/fuzz/vfio-user-fuzzer.ts. `npm run fuzz -- --messages 1000000` runs the
 * same fuzzer outside the suite.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { runFuzz } from "../fuzz/vfio-user-fuzzer.js";
import { type ServerProcess, startFixtureServer } from "../support/server-process.js";

const MESSAGES = Number(process.env.MGPU_FUZZ_COUNT ?? 100_000);

let server: ServerProcess;
before(async () => {
  server = await startFixtureServer("serve-two.js");
});
after(async () => {
  await server.stop();
});

test(`${MESSAGES} mutated messages get errno replies or a clean close, and nothing else is disturbed`, (t) => {
  const seed = Number(process.env.MGPU_FUZZ_SEED ?? 0x5eed);
  const r = runFuzz(
    {
      socketPath: server.socketPath,
      bystanderPath: `${server.socketPath}-b`,
      fdCount: server.fdCount,
      alive: () => server.child.exitCode === null && server.child.signalCode === null,
    },
    { messages: MESSAGES, seed },
  );
  t.diagnostic(JSON.stringify(r));
  // The mix reached both outcomes, the framing lies and the size limit.
  assert.ok(r.errors > MESSAGES / 10 && r.replied - r.errors > MESSAGES / 10, JSON.stringify(r));
  assert.ok(r.closes > 0 && r.oversized > 0 && r.observerMessages > 0, JSON.stringify(r));
  assert.ok(r.worstBystanderMs < 1000, `bystander waited ${r.worstBystanderMs} ms`);
});
