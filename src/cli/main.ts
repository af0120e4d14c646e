#!/usr/bin/env node
/** `mgpu` — the command line. */
import { Command } from "commander";
import { formatProbe, probe } from "./probe.js";
import { serve } from "./serve.js";
import { demo } from "./demo.js";

const program = new Command();
program
  .name("mgpu")
  .description("mediated-gpu: GPU virtualization with mediated pass-through over vfio-user");

program
  .command("probe")
  .description("connect to a vfio-user server and describe its device, like lspci -vv")
  .argument("<socket>", "path of the server's UNIX socket")
  .option("--json", "print JSON instead of text")
  .action((socket: string, options: { json?: boolean }) => {
    const result = probe(socket);
    console.log(
      options.json
        ? JSON.stringify(result, (_k, v: unknown) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v), 2)
        : formatProbe(result),
    );
  });

program
  .command("serve")
  .description("serve vGPUs of a parent GPU on vfio-user sockets, for QEMU's vfio-user-pci")
  .option(
    "--vgpu <type[:uuid]>",
    "a vGPU to create (repeat for more)",
    (v: string, all: string[]) => [...all, v],
    [],
  )
  .option("--socket-dir <dir>", "where the sockets go", "/tmp/mgpu")
  .option("--control", "answer JSON-line commands (stats, screenshot, checksum, quit) on stdin/stdout")
  .option("--watchdog-ms <ms>", "preempt a workload that runs longer than this", (v: string) => Number(v))
  .action((options: { vgpu: string[]; socketDir: string; control?: boolean; watchdogMs?: number }) => {
    serve({
      vgpus: options.vgpu.length ? options.vgpu : ["mgpu-2q"],
      socketDir: options.socketDir,
      control: options.control ?? false,
      ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
    });
  });

program
  .command("demo")
  .description("the whole stack on this machine: vGPUs, guest drivers rendering, a table and PNGs")
  .option("--types <list>", "vGPU types, comma-separated", "mgpu-1q,mgpu-2q,mgpu-2q,mgpu-4q")
  .option("--seconds <n>", "how long to animate", (v: string) => Number(v), 10)
  .option("--out <dir>", "where the PNGs go", "mgpu-demo")
  .action(async (options: { types: string; seconds: number; out: string }) => {
    if (!Number.isFinite(options.seconds) || options.seconds <= 0)
      throw new Error("--seconds must be a positive number");
    process.exitCode = await demo({
      types: options.types.split(","),
      seconds: options.seconds,
      outDir: options.out,
    });
  });

try {
  await program.parseAsync();
} catch (e) {
  const code = (e as { code?: string }).code;
  console.error(
    `mgpu: ${e instanceof Error ? e.message : String(e)}${code && !String(e).includes(code) ? ` (${code})` : ""}`,
  );
  process.exit(1);
}
