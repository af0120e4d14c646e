#!/usr/bin/env node
/** `mgpu` — the command line. */
import { randomUUID } from "node:crypto";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { Command } from "commander";
import { requestDaemon, type Reply, type Request } from "../manager/control.js";
import { DefinitionStore } from "../manager/definitions.js";
import { Mediator } from "../mediator/index.js";
import { VfioUserMpt } from "../hypervisor/vfio-user.js";
import { quietLogger } from "../base/index.js";
import { demo } from "./demo.js";
import { formatProbe, probe } from "./probe.js";
import { serve } from "./serve.js";
import { parseAddress } from "../web/bridge.js";

const program = new Command();
program
  .name("mgpu")
  .description("mediated-gpu: GPU virtualization with mediated pass-through over vfio-user")
  .option(
    "--state-dir <dir>",
    "where definitions, the control socket and vGPU sockets live",
    process.env.MGPU_STATE_DIR ?? join(homedir(), ".local", "state", "mediated-gpu"),
  );

const stateDir = () => resolve(program.opts<{ stateDir: string }>().stateDir);
const store = () => new DefinitionStore(stateDir());
const print = (json: boolean | undefined, value: unknown, text: () => string) =>
  console.log(json ? JSON.stringify(value, null, 2) : text());

/** A request to the running daemon; its errors become ours. */
function daemon(request: Request): Reply {
  const reply = requestDaemon(join(stateDir(), "control.sock"), request);
  if (typeof reply.error === "string") throw Object.assign(new Error(reply.error), { code: reply.code });
  return reply;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
function uuidArg(value: string): string {
  if (!UUID.test(value)) throw new Error(`not a UUID: ${value}`);
  return value;
}

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
  .description("run the daemon: vGPUs on vfio-user sockets for QEMU's vfio-user-pci, defined ones started")
  .option(
    "--vgpu <type[:uuid]>",
    "a vGPU to create now (repeat for more)",
    (v: string, all: string[]) => [...all, v],
    [],
  )
  .option("--socket-dir <dir>", "where the vGPU sockets go (default: <state-dir>/vgpus)")
  .option("--control", "also answer JSON-line control requests on stdin/stdout")
  .option("--watchdog-ms <ms>", "preempt a workload that runs longer than this", (v: string) => Number(v))
  .option("--http <[host:]port>", "serve the HTTP API, /metrics and the dashboard (host: 127.0.0.1)")
  .option("--vnc <[host:]port>", "a VNC console per vGPU, on ports from this one up (0: any free port)")
  .action(
    (options: {
      vgpu: string[];
      socketDir?: string;
      control?: boolean;
      watchdogMs?: number;
      http?: string;
      vnc?: string;
    }) => {
      if (options.watchdogMs !== undefined && !(options.watchdogMs > 0))
        throw new Error("--watchdog-ms must be positive");
      if (options.vnc && !options.http)
        throw new Error("--vnc needs --http (both are served by the web worker)");
      serve({
        ...(options.http ? { http: parseAddress(options.http, "--http") } : {}),
        ...(options.vnc ? { vnc: parseAddress(options.vnc, "--vnc") } : {}),
        stateDir: stateDir(),
        vgpus: options.vgpu,
        control: options.control ?? false,
        ...(options.socketDir ? { socketDir: options.socketDir } : {}),
        ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
      });
    },
  );

program
  .command("types")
  .description("vGPU types and how many more of each fit")
  .option("--json", "print JSON")
  .action((options: { json?: boolean }) => {
    let types: { name: string; description: string; availableInstances: number; weight: number }[];
    try {
      types = daemon({ cmd: "types" }).types as typeof types;
    } catch {
      // No daemon: what an idle parent offers.
      const m = new Mediator({ mpt: (device, hooks) => new VfioUserMpt(device, hooks), logger: quietLogger });
      types = m.types.map((t) => ({ ...t, availableInstances: m.availableInstances(t.name) }));
      m.gpu.close();
    }
    print(options.json, types, () =>
      table([
        ["type", "available", "weight", "description"],
        ...types.map((t) => [t.name, String(t.availableInstances), String(t.weight), t.description]),
      ]),
    );
  });

program
  .command("create")
  .description("create a running vGPU in the daemon (not persistent: see define)")
  .requiredOption("--type <type>", "vGPU type")
  .option("--uuid <uuid>", "its UUID (default: a new one)", uuidArg)
  .option("--json", "print JSON")
  .action((options: { type: string; uuid?: string; json?: boolean }) => {
    const r = daemon({ cmd: "create", type: options.type, ...(options.uuid ? { uuid: options.uuid } : {}) });
    print(options.json, r, () => `${String(r.uuid)} ${String(r.socket)}`);
  });

program
  .command("remove")
  .description("remove a running vGPU from the daemon")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .action((uuid: string) => void daemon({ cmd: "remove", uuid }));

program
  .command("define")
  .description("define a persistent vGPU (a JSON file in the state directory)")
  .requiredOption("--type <type>", "vGPU type")
  .option("--uuid <uuid>", "its UUID (default: a new one)", uuidArg)
  .option("--name <name>", "a name for people")
  .option("--autostart", "start it whenever the daemon starts")
  .action((options: { type: string; uuid?: string; name?: string; autostart?: boolean }) => {
    const uuid = options.uuid ?? randomUUID();
    store().define({
      uuid,
      type: options.type,
      autostart: options.autostart ?? false,
      ...(options.name ? { name: options.name } : {}),
    });
    console.log(uuid);
  });

program
  .command("undefine")
  .description("delete a vGPU definition (a running instance keeps running)")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .action((uuid: string) => store().undefine(uuid));

program
  .command("modify")
  .description("change a vGPU definition")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .option("--type <type>", "vGPU type")
  .option("--name <name>", "a name for people")
  .option("--autostart", "start it whenever the daemon starts")
  .option("--no-autostart", "do not start it with the daemon")
  .action((uuid: string, options: { type?: string; name?: string; autostart?: boolean }) => {
    store().modify(uuid, {
      ...(options.type ? { type: options.type } : {}),
      ...(options.name ? { name: options.name } : {}),
      ...(options.autostart !== undefined ? { autostart: options.autostart } : {}),
    });
  });

program
  .command("list")
  .description("running vGPUs (or, with --defined, the definitions)")
  .option("--defined", "list the persistent definitions")
  .option("--json", "print JSON")
  .action((options: { defined?: boolean; json?: boolean }) => {
    if (options.defined) {
      const { definitions, broken } = store().load();
      for (const b of broken) console.error(`mgpu: skipping ${b.file}: ${b.reason}`);
      print(options.json, definitions, () =>
        table([
          ["uuid", "type", "autostart", "name"],
          ...definitions.map((d) => [d.uuid, d.type, d.autostart ? "yes" : "no", d.name ?? ""]),
        ]),
      );
      return;
    }
    const vgpus = daemon({ cmd: "list" }).vgpus as {
      uuid: string;
      type: string;
      socket: string;
      defined: boolean;
      share: number;
    }[];
    print(options.json, vgpus, () =>
      table([
        ["uuid", "type", "defined", "share", "socket"],
        ...vgpus.map((v) => [
          v.uuid,
          v.type,
          v.defined ? "yes" : "no",
          `${(100 * v.share).toFixed(1)}%`,
          v.socket,
        ]),
      ]),
    );
  });

program
  .command("start")
  .description("start a defined vGPU in the daemon")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .action((uuid: string) => console.log(String(daemon({ cmd: "start", uuid }).socket)));

program
  .command("stop")
  .description("stop a running vGPU (its definition stays)")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .action((uuid: string) => void daemon({ cmd: "stop", uuid }));

program
  .command("qemu-args")
  .description("the QEMU options that attach a running vGPU")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .action((uuid: string) => {
    const qemu = daemon({ cmd: "qemu-args", uuid }).qemu as string[];
    console.log(qemu.map((a) => (/[ {]/.test(a) ? `'${a}'` : a)).join(" "));
  });

program
  .command("screenshot")
  .description("write a running vGPU's display as a PNG")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .argument("<out>", "PNG file to write")
  .action((uuid: string, out: string) => {
    const r = daemon({ cmd: "screenshot", uuid, path: resolve(out) });
    console.log(`${out}: ${String(r.width)}x${String(r.height)}`);
  });

program
  .command("demo")
  .description("the whole stack on this machine: simulated VMs with vGPUs rendering, a table and PNGs")
  .option("--types <list>", "vGPU types, comma-separated", "mgpu-1q,mgpu-2q,mgpu-2q,mgpu-4q")
  .option("--seconds <n>", "how long to animate", (v: string) => Number(v), 10)
  .option("--out <dir>", "where the PNGs go", "mgpu-demo")
  .option("--vms <n>", "how many VMs (types repeat if fewer are given)", (v: string) => Number(v))
  .option("--memory-model <model>", "kvm, xen or mixed (alternating)", "mixed")
  .option("--hostile <list>", "VM indexes whose guest driver misbehaves, comma-separated", "")
  .option("--dashboard [address]", "watch the VMs in the web dashboard ([host:]port, default 127.0.0.1:8080)")
  .action(
    async (options: {
      types: string;
      seconds: number;
      out: string;
      vms?: number;
      memoryModel: string;
      hostile: string;
      dashboard?: string | boolean;
    }) => {
      if (!Number.isFinite(options.seconds) || options.seconds <= 0)
        throw new Error("--seconds must be a positive number");
      if (!["kvm", "xen", "mixed"].includes(options.memoryModel))
        throw new Error(`--memory-model must be kvm, xen or mixed, not ${options.memoryModel}`);
      const given = options.types.split(",").filter(Boolean);
      const count = options.vms ?? given.length;
      if (!Number.isInteger(count) || count < 1 || count > 64) throw new Error("--vms must be 1..64");
      const hostile = options.hostile ? options.hostile.split(",").map(Number) : [];
      if (hostile.some((h) => !Number.isInteger(h) || h < 0 || h >= count))
        throw new Error("--hostile names VMs that do not exist");
      process.exitCode = await demo({
        types: Array.from({ length: count }, (_, i) => given[i % given.length]!),
        seconds: options.seconds,
        outDir: options.out,
        memoryModel: options.memoryModel as "kvm" | "xen" | "mixed",
        hostile,
        ...(options.dashboard
          ? {
              dashboard: parseAddress(
                options.dashboard === true ? "127.0.0.1:8080" : options.dashboard,
                "--dashboard",
              ),
            }
          : {}),
      });
    },
  );

try {
  await program.parseAsync();
} catch (e) {
  const code = (e as { code?: string }).code;
  const message = e instanceof Error ? e.message : String(e);
  console.error(
    `mgpu: ${message}${code && !message.includes(code) && code.startsWith("E") ? ` (${code})` : ""}`,
  );
  process.exit(1);
}
