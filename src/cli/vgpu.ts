#!/usr/bin/env node
/**
 * `mgpu-vgpu`: one vGPU as a vfio-user backend program, the binary that
 * packaging/vfio-user/mediated-gpu.json names. The same as
 * `mgpu serve --socket-path=PATH | --fd=N [--vgpu TYPE[:UUID]]`.
 */
const args = process.argv.slice(2);
const informational = args.some((a) => ["-h", "--help", "-V", "--version"].includes(a));
if (!informational && !args.some((a) => /^--(socket-path|fd)(=|$)/.test(a))) {
  console.error("usage: mgpu-vgpu --socket-path=PATH | --fd=N [--vgpu TYPE[:UUID]] [--log-level LEVEL]");
  process.exit(2);
}
process.argv.splice(2, 0, "serve");
await import("./main.js");
