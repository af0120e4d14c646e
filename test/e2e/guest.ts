/**
 * End-to-end harness: boots a real Linux guest under the real QEMU (the one with
 * the vfio-user-pci client) from the Debian tree that scripts/provision-guest.sh
 * builds, runs a caller's shell script as the guest's only job, and returns what
 * the guest printed on its serial console.
 *
 * QEMU runs as `chroot TREE qemu-system-x86_64 ...`: the host's own QEMU is too
 * old. Nothing is mounted into the tree (QEMU needs only the tree's static /dev
 * nodes), so nothing can leak; the one file a boot puts in the tree (its
 * initramfs, under TREE/tmp) is removed when QEMU exits.
 */
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

// ---------------------------------------------------------------- the tree

/** The provisioned tree named by MGPU_GUEST_TREE (scripts/test.sh sets it), if complete. */
export function guestTree(): string | undefined {
  const tree = process.env.MGPU_GUEST_TREE;
  return tree && existsSync(join(tree, ".complete")) ? tree : undefined;
}

/** Why a guest cannot be booted here, or undefined when it can. */
function cannotBoot(): string | undefined {
  const named = process.env.MGPU_GUEST_TREE;
  if (!named) return "no guest tree: MGPU_GUEST_TREE is unset (scripts/test.sh provisions one as root)";
  if (!guestTree()) return `MGPU_GUEST_TREE=${named} is not a complete tree (no .complete marker)`;
  if (process.getuid?.() !== 0) return "booting the guest needs root (QEMU runs under chroot)";
  return undefined;
}

/** The part of node:test's TestContext a test needs to skip itself. */
export interface Skippable {
  skip(message?: string): void;
}

/**
 * The tree, or undefined after skipping `t` with a one-line reason. Under CI
 * (CI=true) a missing tree throws instead: CI must not pass by skipping.
 */
export function requireGuestTree(t: Skippable): string | undefined {
  const reason = cannotBoot();
  if (reason === undefined) return guestTree();
  if (process.env.CI === "true") throw new Error(`${reason}; under CI the end-to-end tests must run`);
  t.skip(reason);
  return undefined;
}

/**
 * A unix socket path inside the tree, as the host sees it and as the chrooted
 * QEMU sees it. The pid in the name keeps concurrent test runs (which share the
 * cached tree) apart; a stale file at that path is removed now, and the socket
 * when this process exits.
 */
export function socketPathInTree(tree: string, name: string): { hostPath: string; guestPath: string } {
  const file = `mgpu-${process.pid}-${name}.sock`;
  const hostPath = join(tree, "run", file);
  // sun_path holds 108 bytes with its NUL; a longer path fails obscurely in bind().
  if (Buffer.byteLength(hostPath) > 107) throw new Error(`socket path too long for AF_UNIX: ${hostPath}`);
  mkdirSync(join(tree, "run"), { recursive: true });
  rmSync(hostPath, { force: true });
  // Servers rarely unlink their socket; don't let them pile up in the shared tree.
  process.once("exit", () => rmSync(hostPath, { force: true }));
  return { hostPath, guestPath: `/run/${file}` };
}

/** QEMU options for guest RAM the device can map by fd (memfd, shared) on a q35 machine. */
export function sharedMemory(mib: number): string[] {
  return [
    "-object",
    `memory-backend-memfd,id=mem,size=${mib}M,share=on`,
    "-machine",
    "q35,memory-backend=mem",
  ];
}

/** QEMU options that attach a vfio-user device served at `socket` (a path as QEMU sees it). */
export function vfioUserDevice(socket: string): string[] {
  return ["-device", JSON.stringify({ driver: "vfio-user-pci", socket: { path: socket, type: "unix" } })];
}

/** The stock bochs DRM driver and what it needs, in insmod order. */
export const BOCHS_MODULES: readonly string[] = [
  "drm",
  "drm_kms_helper",
  "ttm",
  "drm_ttm_helper",
  "drm_vram_helper",
  "bochs",
];

// ------------------------------------------------------------ the kernel

/** The kernel version that has both an image in /boot and a module tree. */
function kernelVersion(tree: string): string {
  const versions = readdirSync(join(tree, "lib", "modules"))
    .filter((v) => existsSync(join(tree, "boot", `vmlinuz-${v}`)))
    .sort();
  const version = versions.at(-1);
  if (version === undefined) throw new Error(`no kernel (boot/vmlinuz-V with lib/modules/V) in ${tree}`);
  return version;
}

/** Module names treat '-' and '_' alike (vfio-pci is vfio_pci), as modprobe does. */
const moduleKey = (name: string): string => name.replace(/-/g, "_");

interface ModuleIndex {
  readonly files: ReadonlyMap<string, string>;
  readonly builtin: ReadonlySet<string>;
}
const moduleIndexes = new Map<string, ModuleIndex>();

/** Every module file of the tree's kernel by name, and the names built into it. */
function moduleIndex(tree: string, version: string): ModuleIndex {
  const root = join(tree, "lib", "modules", version);
  const cached = moduleIndexes.get(root);
  if (cached) return cached;
  const files = new Map<string, string>();
  const stack = [join(root, "kernel")];
  for (let dir = stack.pop(); dir !== undefined; dir = stack.pop()) {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const m = /^(.+)\.ko(\.xz)?$/.exec(e.name);
      if (e.isDirectory()) stack.push(join(dir, e.name));
      else if (m) files.set(moduleKey(m[1]!), join(dir, e.name));
    }
  }
  const builtinFile = join(root, "modules.builtin");
  const builtin = new Set(
    existsSync(builtinFile)
      ? readFileSync(builtinFile, "utf8")
          .split("\n")
          .filter(Boolean)
          .map((line) => moduleKey(line.replace(/^.*\//, "").replace(/\.ko$/, "")))
      : [],
  );
  const index = { files, builtin };
  moduleIndexes.set(root, index);
  return index;
}

/** A module's bytes, decompressed with the tree's own xz (Node has no xz). */
function moduleBytes(tree: string, path: string): Buffer {
  if (!path.endsWith(".xz")) return readFileSync(path);
  return execFileSync("chroot", [tree, "xz", "-dc", "--", path.slice(tree.length)], {
    maxBuffer: 256 << 20,
  });
}

// ----------------------------------------------------------- initramfs

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

interface CpioEntry {
  readonly name: string;
  readonly mode: number;
  /** File contents, or a symlink's target. */
  readonly data?: Buffer | string;
  /** A device node's major and minor. */
  readonly rdev?: readonly [number, number];
}

/** An uncompressed "newc" cpio archive, the format the kernel unpacks as initramfs. */
function cpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  const all: CpioEntry[] = [...entries, { name: "TRAILER!!!", mode: 0 }];
  all.forEach((e, i) => {
    const data = typeof e.data === "string" ? Buffer.from(e.data) : (e.data ?? Buffer.alloc(0));
    const name = Buffer.from(`${e.name}\0`);
    const ino = i === entries.length ? 0 : i + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    const fields = [
      ino,
      e.mode,
      0,
      0,
      1,
      0,
      data.length,
      0,
      0,
      e.rdev?.[0] ?? 0,
      e.rdev?.[1] ?? 0,
      name.length,
      0,
    ];
    const header = Buffer.from(`070701${fields.map(hex).join("")}`, "ascii");
    parts.push(header, name, pad(header.length + name.length), data, pad(data.length));
  });
  return Buffer.concat(parts);
}

const appletLists = new Map<string, string[]>();

/** The applets of the tree's static busybox (it runs on the host as is). */
function applets(tree: string): string[] {
  let list = appletLists.get(tree);
  if (!list) {
    const out = execFileSync(join(tree, "bin", "busybox"), ["--list"], { encoding: "utf8" });
    list = out.split("\n").filter((a) => a && a !== "busybox" && !a.includes("/"));
    appletLists.set(tree, list);
  }
  return list;
}

const BEGIN = "MGPU-SCRIPT-BEGIN";
const END = "MGPU-SCRIPT-END";

/**
 * PID 1. The caller's script runs as its own shell so that an `exit` in it ends
 * the script, not init (which would panic the kernel); its status is reported.
 */
const INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo ${BEGIN}
sh /script.sh
echo "${END} status=$?"
poweroff -f
`;

/** Defined for the caller's script: loads the boot's modules in the order given. */
const PRELUDE = `load_modules() {
  for m in $MGPU_MODULES; do
    [ -f /modules/$m.ko ] || continue # built into the kernel
    insmod /modules/$m.ko || echo "INSMOD_FAILED=$m"
  done
}
`;

function initramfs(tree: string, options: BootOptions): Buffer {
  const dir = (name: string): CpioEntry => ({ name, mode: S_IFDIR | 0o755 });
  const link = (name: string, target: string): CpioEntry => ({ name, mode: S_IFLNK | 0o777, data: target });
  const file = (name: string, data: Buffer | string, perm = 0o755): CpioEntry => ({
    name,
    mode: S_IFREG | perm,
    data,
  });
  const entries: CpioEntry[] = [
    ...["bin", "dev", "proc", "sys", "tmp", "run", "modules", "usr"].map(dir),
    link("sbin", "bin"),
    link("usr/bin", "../bin"),
    link("usr/sbin", "../bin"),
    // The kernel opens /dev/console for init before our devtmpfs mount.
    { name: "dev/console", mode: S_IFCHR | 0o600, rdev: [5, 1] },
    file("bin/busybox", readFileSync(join(tree, "bin", "busybox"))),
    ...applets(tree).map((a) => link(`bin/${a}`, "busybox")),
    file("init", INIT),
  ];

  const modules = options.modules ?? [];
  if (modules.length > 0) {
    const index = moduleIndex(tree, kernelVersion(tree));
    for (const name of modules) {
      const path = index.files.get(moduleKey(name));
      if (path) entries.push(file(`modules/${name}.ko`, moduleBytes(tree, path), 0o644));
      else if (!index.builtin.has(moduleKey(name)))
        throw new Error(`kernel module ${name} is neither a file nor built in (${tree})`);
    }
  }
  const dirs = new Set(entries.filter((e) => (e.mode & S_IFMT) === S_IFDIR).map((e) => e.name));
  for (const [guestPath, hostPath] of Object.entries(options.files ?? {})) {
    const name = guestPath.replace(/^\/+/, "");
    const parents = name.split("/").slice(0, -1);
    parents.forEach((_, i) => {
      const d = parents.slice(0, i + 1).join("/");
      if (!dirs.has(d)) entries.push(dir(d));
      dirs.add(d);
    });
    entries.push(file(name, readFileSync(hostPath)));
  }
  const script = `MGPU_MODULES=${JSON.stringify(modules.join(" "))}\n${PRELUDE}\n${options.script}\n`;
  entries.push(file("script.sh", script));
  return cpio(entries);
}

// ------------------------------------------------------------------ boot

export interface BootOptions {
  readonly tree: string;
  /**
   * Shell (busybox sh) run after proc, sys and devtmpfs are mounted, with every
   * applet on PATH. Report results as `KEY=value` lines (KEY in [A-Z0-9_]); they
   * come back in BootResult.values. `load_modules` insmods `modules` in order.
   */
  readonly script: string;
  /** Kernel modules by name (e.g. BOCHS_MODULES), decompressed into /modules/NAME.ko. */
  readonly modules?: readonly string[];
  /** Extra files for the initramfs, made executable: guest path → host path. */
  readonly files?: Readonly<Record<string, string>>;
  /** Extra kernel command-line arguments (the last of a repeated one wins, e.g. loglevel=7). */
  readonly append?: string;
  /** Extra QEMU arguments: devices, memory backends (see sharedMemory, vfioUserDevice). */
  readonly qemuArgs?: readonly string[];
  /** Guest RAM; must match the size of a memory backend in qemuArgs. Default 256. */
  readonly memoryMiB?: number;
  /** QEMU's process group is killed after this long. Default 120 000. */
  readonly timeoutMs?: number;
  /** Called with every chunk of output (e.g. to act when the guest reaches a point). */
  readonly onOutput?: (text: string) => void;
}

export interface BootResult {
  /** The serial console and QEMU's stderr, in the order they arrived. */
  readonly output: string;
  /** QEMU's stderr alone (its errors about devices and sockets). */
  readonly stderr: string;
  /** QEMU's exit code: 0 after the guest powers off; null when killed. */
  readonly exitCode: number | null;
  readonly timedOut: boolean;
  /** The script's exit status; undefined if it never finished. */
  readonly scriptStatus: number | undefined;
  /** `KEY=value` lines the script printed (the last of a repeated KEY wins). */
  readonly values: Readonly<Record<string, string>>;
  readonly durationMs: number;
}

/** Picks the script's KEY=value lines and exit status out of the console output. */
export function parseScriptOutput(output: string): {
  values: Record<string, string>;
  scriptStatus: number | undefined;
} {
  const start = output.indexOf(BEGIN);
  const body = start < 0 ? "" : output.slice(start + BEGIN.length);
  const end = new RegExp(`${END} status=(\\d+)`).exec(body);
  const values: Record<string, string> = {};
  for (const line of (end ? body.slice(0, end.index) : body).split("\n")) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.replace(/\r$/, ""));
    if (m) values[m[1]!] = m[2]!;
  }
  return { values, scriptStatus: end ? Number(end[1]) : undefined };
}

/** Boots the guest, runs `options.script` in it, and resolves once QEMU has exited. */
export async function bootGuest(options: BootOptions): Promise<BootResult> {
  const { tree } = options;
  const started = Date.now();
  const version = kernelVersion(tree);
  // QEMU sees the tree as /, so the initramfs must live inside it.
  const initrd = `/tmp/mgpu-initrd-${process.pid}-${randomBytes(4).toString("hex")}.cpio`;
  mkdirSync(join(tree, "tmp"), { recursive: true });
  writeFileSync(join(tree, initrd), initramfs(tree, options), { flag: "wx" });
  try {
    const args = [
      tree,
      "qemu-system-x86_64",
      // Nested KVM fails while the kernel decompresses on this machine kind.
      ...["-accel", "tcg", "-m", String(options.memoryMiB ?? 256)],
      // -nodefaults: no stdvga to take the Bochs identity, no NIC, no monitor;
      // -display none rather than -nographic, which would also claim stdio.
      ...["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio"],
      ...["-kernel", `/boot/vmlinuz-${version}`, "-initrd", initrd],
      ...["-append", `console=ttyS0 panic=-1 quiet ${options.append ?? ""}`.trim()],
      ...(options.qemuArgs ?? []),
    ];
    // Its own process group, so a timeout kills QEMU and not just chroot's pid.
    const child = spawn("chroot", args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
    const kill = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    };
    // A test runner that exits mid-boot must not leave QEMU running.
    process.once("exit", kill);
    let output = "";
    let stderr = "";
    const onData = (isErr: boolean) => (chunk: Buffer) => {
      const text = chunk.toString();
      output += text;
      if (isErr) stderr += text;
      options.onOutput?.(text);
    };
    child.stdout.on("data", onData(false));
    child.stderr.on("data", onData(true));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, options.timeoutMs ?? 120_000);
    try {
      // 'close', not 'exit': the last lines may still be in the pipes at 'exit'.
      const exitCode = await new Promise<number | null>((resolve, reject) => {
        child.once("error", reject);
        child.once("close", (code) => resolve(code));
      });
      return {
        output,
        stderr,
        exitCode,
        timedOut,
        ...parseScriptOutput(output),
        durationMs: Date.now() - started,
      };
    } finally {
      clearTimeout(timer);
      process.removeListener("exit", kill);
    }
  } finally {
    rmSync(join(tree, initrd), { force: true });
  }
}
