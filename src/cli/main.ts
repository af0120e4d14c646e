#!/usr/bin/env node
/**
 * `mgpu` — the command line. Exit status: 0 done, 1 it did not work (no
 * daemon, busy vGPU, not defined…), 2 it was asked wrongly (usage, an invalid
 * type, UUID, name or option value).
 */
import { randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { requestDaemon, type Reply, type Request } from "../manager/control.js";
import { DefinitionStore } from "../manager/definitions.js";
import { ManagerError, USAGE_CODES } from "../manager/errors.js";
import { defaultStateDir } from "../manager/paths.js";
import { checkType, checkUuid, parseVgpuSpec } from "../manager/validate.js";
import { Mediator } from "../mediator/index.js";
import { VfioUserMpt } from "../hypervisor/vfio-user.js";
import { MgpuError, defaultLogger, quietLogger } from "../base/index.js";
import { demo } from "./demo.js";
import { formatProbe, probe } from "./probe.js";
import { serve } from "./serve.js";
import { parseAddress } from "../web/bridge.js";

const packageJson = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "package.json");
const version = (JSON.parse(readFileSync(packageJson, "utf8")) as { version: string }).version;

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

/** An option value checked by `check` (which throws ManagerError): commander reports it as a usage error. */
function argument<T>(check: (v: string) => T): (v: string) => T {
  return (v) => {
    try {
      return check(v);
    } catch (e) {
      throw new InvalidArgumentError(e instanceof Error ? e.message : String(e));
    }
  };
}
const uuidArg = argument((v) => checkUuid(v));
const typeArg = argument((v) => checkType(v));
const positive = argument((v) => {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new Error(`must be a positive number, not ${v}`);
  return n;
});
const logLevelArg = argument((v) => {
  if (!(LOG_LEVELS as readonly string[]).includes(v))
    throw new Error(`must be one of ${LOG_LEVELS.join(", ")}, not ${JSON.stringify(v)}`);
  return v;
});

const program = new Command();
program
  .name("mgpu")
  .description("mediated-gpu: GPU virtualization with mediated pass-through over vfio-user")
  .version(version, "-V, --version")
  .exitOverride()
  .option(
    "--state-dir <dir>",
    "where definitions, the lock, the control socket and vGPU sockets live " +
      "(default: $MGPU_STATE_DIR, else $XDG_STATE_HOME/mediated-gpu, else ~/.local/state/mediated-gpu)",
  );

const stateDir = () => resolve(program.opts<{ stateDir?: string }>().stateDir ?? defaultStateDir());
const store = () => new DefinitionStore(stateDir());
const print = (json: boolean | undefined, value: unknown, text: () => string) =>
  console.log(json ? JSON.stringify(value, null, 2) : text());

/** A request to the running daemon; its errors become ours, with their code. */
function daemon(request: Request): Reply {
  const reply = requestDaemon(join(stateDir(), "control.sock"), request);
  if (typeof reply.error === "string") throw new MgpuError(String(reply.code ?? "EIO"), reply.error);
  return reply;
}

/**
 * Columns padded to their widest cell, two spaces apart, like mdevctl and ps:
 * easy to read and to cut/awk. Kept by hand (ten lines) rather than a table
 * library, whose box-drawing output scripts would have to strip.
 */
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

program
  .command("probe")
  .description(
    "describe a vfio-user server's device like lspci -vv (read-only: never disturbs a VMM using it)",
  )
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
  .description(
    "run the daemon in the foreground: vGPUs on vfio-user sockets, defined ones started; " +
      "with --socket-path or --fd, one vGPU as a vfio-user backend program",
  )
  .option(
    "--vgpu <type[:uuid]>",
    "a vGPU to create now (repeat for more; with --socket-path/--fd: the one vGPU)",
    (v: string, all: { type: string; uuid?: string }[]) => [...all, argument(parseVgpuSpec)(v)],
    [],
  )
  .option("--socket-dir <dir>", "where the vGPU sockets go (default: <state-dir>/vgpus)")
  .addOption(
    new Option("--socket-path <path>", "serve one vGPU on this socket (backend conventions)").conflicts([
      "fd",
      "control",
    ]),
  )
  .addOption(
    new Option("--fd <n>", "serve one vGPU on this already-listening socket fd (backend conventions)")
      .argParser(
        argument((v) => {
          const n = Number(v);
          if (!Number.isInteger(n) || n < 0) throw new Error(`must be a file descriptor number, not ${v}`);
          return n;
        }),
      )
      .conflicts(["socketPath", "control"]),
  )
  .option("--control", "also answer JSON-line control requests on stdin/stdout (stops when stdin ends)")
  .option("--watchdog-ms <ms>", "preempt a workload that runs longer than this", positive)
  .option(
    "--socket-gid <gid>",
    "let this group connect too (sockets 0660 instead of 0600)",
    argument((v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0) throw new Error(`must be a numeric group id, not ${v}`);
      return n;
    }),
  )
  .addOption(
    new Option("--log-level <level>", `log level: ${LOG_LEVELS.join(", ")}`)
      .argParser(logLevelArg)
      .default(undefined, "$MGPU_LOG_LEVEL, else warn"),
  )
  .option(
    "--http <[host:]port>",
    "serve the HTTP API, /metrics and the dashboard (host: 127.0.0.1)",
    argument((v) => parseAddress(v, "--http")),
  )
  .option(
    "--vnc <[host:]port>",
    "a VNC console per vGPU, on ports from this one up (0: any free port)",
    argument((v) => parseAddress(v, "--vnc")),
  )
  .action(
    async (options: {
      http?: { host: string; port: number };
      vnc?: { host: string; port: number };
      vgpu: { type: string; uuid?: string }[];
      socketDir?: string;
      socketPath?: string;
      fd?: number;
      control?: boolean;
      watchdogMs?: number;
      socketGid?: number;
      logLevel?: string;
    }) => {
      const single = options.socketPath !== undefined || options.fd !== undefined;
      if (options.vnc && !options.http)
        throw new ManagerError("EUSAGE", "--vnc needs --http (both are served by the web worker)");
      if (single && options.http)
        throw new ManagerError("EUSAGE", "--http serves the daemon, not --socket-path/--fd");
      if (single && options.vgpu.length > 1)
        throw new ManagerError("EUSAGE", "--socket-path/--fd serve one vGPU: give at most one --vgpu");
      const level = options.logLevel ?? process.env.MGPU_LOG_LEVEL ?? "warn";
      if (!(LOG_LEVELS as readonly string[]).includes(level))
        throw new ManagerError(
          "EUSAGE",
          `MGPU_LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}, not ${JSON.stringify(level)}`,
        );
      await serve({
        stateDir: stateDir(),
        vgpus: options.vgpu,
        control: options.control ?? false,
        logger: defaultLogger(level),
        ...(options.socketDir ? { socketDir: options.socketDir } : {}),
        ...(options.socketPath !== undefined ? { socketPath: resolve(options.socketPath) } : {}),
        ...(options.fd !== undefined ? { fd: options.fd } : {}),
        ...(options.watchdogMs ? { watchdogMs: options.watchdogMs } : {}),
        ...(options.socketGid !== undefined ? { access: { gid: options.socketGid } } : {}),
        ...(options.http ? { http: options.http } : {}),
        ...(options.vnc ? { vnc: options.vnc } : {}),
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
  .requiredOption("--type <type>", "vGPU type", typeArg)
  .option("--uuid <uuid>", "its UUID (default: a new one)", uuidArg)
  .option("--json", "print JSON")
  .action((options: { type: string; uuid?: string; json?: boolean }) => {
    const r = daemon({ cmd: "create", type: options.type, ...(options.uuid ? { uuid: options.uuid } : {}) });
    print(options.json, r, () => `${String(r.uuid)} ${String(r.socket)}`);
  });

/** `remove` and `stop`: both take a running vGPU away, refused while a VMM is attached unless --force. */
function stoppingCommand(cmd: "remove" | "stop", description: string): void {
  program
    .command(cmd)
    .description(`${description} (refused while a VMM is attached, unless --force)`)
    .argument("<uuid>", "vGPU UUID", uuidArg)
    .option("--force", `ask the attached VMM to release it (REQ interrupt), wait a bounded time, then ${cmd}`)
    .action((uuid: string, options: { force?: boolean }) => {
      const r = daemon({ cmd, uuid, ...(options.force ? { force: true } : {}) });
      if (r.released === false)
        console.error(`mgpu: the VMM did not release ${uuid} in time; it was disconnected`);
    });
}

stoppingCommand("remove", "remove a running vGPU from the daemon");

program
  .command("define")
  .description("define a persistent vGPU (a JSON file in the state directory)")
  .requiredOption("--type <type>", "vGPU type", typeArg)
  .option("--uuid <uuid>", "its UUID (default: a new one)", uuidArg)
  .option("--name <name>", "a name for people (1 to 128 printable characters)")
  .option("--autostart", "start it whenever the daemon starts")
  .option("--force", "replace a broken definition file of that UUID")
  .action((options: { type: string; uuid?: string; name?: string; autostart?: boolean; force?: boolean }) => {
    const uuid = options.uuid ?? randomUUID();
    store().define(
      {
        uuid,
        type: options.type,
        autostart: options.autostart ?? false,
        ...(options.name !== undefined ? { name: options.name } : {}),
      },
      { force: options.force ?? false },
    );
    console.log(uuid);
  });

program
  .command("undefine")
  .description("delete a vGPU definition, broken or not (a running instance keeps running)")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .action((uuid: string) => store().undefine(uuid));

program
  .command("modify")
  .description("change a vGPU definition")
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .option("--type <type>", "vGPU type", typeArg)
  .option("--name <name>", "a name for people")
  .option("--autostart", "start it whenever the daemon starts")
  .option("--no-autostart", "do not start it with the daemon")
  .action((uuid: string, options: { type?: string; name?: string; autostart?: boolean }) => {
    store().modify(uuid, {
      ...(options.type ? { type: options.type } : {}),
      ...(options.name !== undefined ? { name: options.name } : {}),
      ...(options.autostart !== undefined ? { autostart: options.autostart } : {}),
    });
  });

interface ListedVgpu {
  uuid: string;
  type: string;
  socket: string;
  defined: boolean;
  state: string;
  error: number;
  share: number;
}

program
  .command("list")
  .description("running vGPUs and their state (or, with --defined, the definitions, broken ones included)")
  .option("--defined", "list the persistent definitions")
  .option("--json", "print JSON")
  .action((options: { defined?: boolean; json?: boolean }) => {
    if (options.defined) {
      const { definitions, broken } = store().load();
      for (const b of broken) console.error(`mgpu: broken definition ${b.file}: ${b.reason}`);
      const rows = [...definitions, ...broken.map((b) => ({ uuid: b.uuid, file: b.file, broken: b.reason }))];
      print(options.json, rows, () =>
        table([
          ["uuid", "type", "autostart", "name", "state"],
          ...definitions.map((d) => [d.uuid, d.type, d.autostart ? "yes" : "no", d.name ?? "", "ok"]),
          ...broken.map((b) => [b.uuid ?? b.file, "?", "?", "", `broken: ${b.reason}`]),
        ]),
      );
      return;
    }
    const vgpus = daemon({ cmd: "list" }).vgpus as ListedVgpu[];
    const state = (v: ListedVgpu) => (v.state === "error" ? `error 0x${v.error.toString(16)}` : v.state);
    print(options.json, vgpus, () =>
      table([
        ["uuid", "type", "state", "defined", "share", "socket"],
        ...vgpus.map((v) => [
          v.uuid,
          v.type,
          state(v),
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

stoppingCommand("stop", "stop a running vGPU, its definition stays");

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
  .description(
    "write a running vGPU's display as a PNG (the daemon sends the bytes; this command writes the file)",
  )
  .argument("<uuid>", "vGPU UUID", uuidArg)
  .argument("<out>", "PNG file to write")
  .action((uuid: string, out: string) => {
    const r = daemon({ cmd: "screenshot", uuid });
    writeFileSync(out, Buffer.from(String(r.png), "base64"));
    console.log(`${out}: ${String(r.width)}x${String(r.height)}`);
  });

program
  .command("quit")
  .description("stop the daemon cleanly (as SIGTERM does)")
  .action(() => void daemon({ cmd: "quit" }));

program
  .command("demo")
  .description("the whole stack on this machine: simulated VMs with vGPUs rendering, a table and PNGs")
  .option("--types <list>", "vGPU types, comma-separated", "mgpu-1q,mgpu-2q,mgpu-2q,mgpu-4q")
  .option("--seconds <n>", "how long to animate", positive, 10)
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
      const usage = (m: string) => new ManagerError("EUSAGE", m);
      if (!["kvm", "xen", "mixed"].includes(options.memoryModel))
        throw usage(`--memory-model must be kvm, xen or mixed, not ${options.memoryModel}`);
      const given = options.types.split(",").filter(Boolean);
      for (const t of given) checkType(t);
      const count = options.vms ?? given.length;
      if (!Number.isInteger(count) || count < 1 || count > 64) throw usage("--vms must be 1..64");
      const hostile = options.hostile ? options.hostile.split(",").map(Number) : [];
      if (hostile.some((h) => !Number.isInteger(h) || h < 0 || h >= count))
        throw usage("--hostile names VMs that do not exist");
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
  // Done: a handle such as stdin (serve --control) must not keep the process up.
  // Output to files, pipes and terminals is written synchronously on Linux, so nothing is lost.
  process.exit(typeof process.exitCode === "number" ? process.exitCode : 0);
} catch (e) {
  if (e instanceof CommanderError) {
    // Help and --version end here with exit code 0; commander already printed its message.
    process.exit(e.exitCode === 0 ? 0 : 2);
  }
  const code = (e as { code?: string }).code;
  const message = e instanceof Error ? e.message : String(e);
  console.error(
    `mgpu: ${message}${code && !message.includes(code) && code.startsWith("E") ? ` (${code})` : ""}`,
  );
  process.exit(code !== undefined && USAGE_CODES.has(code) ? 2 : 1);
}
