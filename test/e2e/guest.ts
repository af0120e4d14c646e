/**
 * Boots a real Linux guest under the real QEMU (vfio-user-pci) from the tree that
 * scripts/provision-guest.sh builds, runs a shell script inside it, and returns
 * what the guest printed on its serial console.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import type { TestContext } from "node:test";

/** The provisioned tree, or undefined. Under CI a missing tree is an error, not a skip. */
export function guestTree(t: TestContext): string | undefined {
  const tree = process.env.MGPU_GUEST_TREE;
  if (tree && existsSync(join(tree, ".complete"))) return tree;
  const reason = "no guest tree (run scripts/provision-guest.sh as root and set MGPU_GUEST_TREE)";
  if (process.env.CI === "true") throw new Error(reason);
  t.skip(reason);
  return undefined;
}

/** A socket path inside the tree, and the same path as QEMU (chrooted) sees it. */
export function socketInTree(tree: string, name: string): { hostPath: string; guestPath: string } {
  mkdirSync(join(tree, "run"), { recursive: true });
  const file = `mgpu-${process.pid}-${name}.sock`;
  return { hostPath: join(tree, "run", file), guestPath: `/run/${file}` };
}

export interface BootOptions {
  readonly tree: string;
  /** Shell run by /init after proc, sys and dev are mounted (busybox applets on PATH). */
  readonly script: string;
  /** Kernel modules (by name) decompressed into /modules for the script to insmod, in order. */
  readonly modules?: readonly string[];
  /** Extra files for the initramfs: guest path → host path. */
  readonly files?: Readonly<Record<string, string>>;
  /** Extra kernel command-line arguments. */
  readonly append?: string;
  /** Extra QEMU arguments (devices, memory backends). */
  readonly qemuArgs?: readonly string[];
  readonly memoryMiB?: number;
  readonly timeoutMs?: number;
  /** Called for every chunk the guest prints (e.g. to react when it reaches a point). */
  readonly onOutput?: (text: string) => void;
}

export interface BootResult {
  readonly output: string;
  readonly exitCode: number | null;
  readonly timedOut: boolean;
  /** Lines `KEY=value` the script printed between the markers. */
  readonly values: Record<string, string>;
}

const BEGIN = "MGPU-SCRIPT-BEGIN";
const END = "MGPU-SCRIPT-END";

function kernelVersion(tree: string): string {
  const versions = readdirSync(join(tree, "lib", "modules"));
  if (versions.length === 0) throw new Error(`no kernel in ${tree}`);
  return versions.sort().at(-1)!;
}

function findModule(tree: string, version: string, name: string): string {
  const root = join(tree, "lib", "modules", version, "kernel");
  const want = new Set([`${name}.ko`, `${name}.ko.xz`, `${name}.ko.zst`]);
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) stack.push(join(dir, e.name));
      else if (want.has(e.name)) return join(dir, e.name);
    }
  }
  throw new Error(`kernel module ${name} not found under ${root}`);
}

/** Builds an initramfs (newc cpio) inside the tree; returns its path as seen from the chroot. */
function buildInitramfs(
  tree: string,
  script: string,
  modules: readonly string[],
  files: Readonly<Record<string, string>>,
): { guestPath: string; dir: string } {
  const tmp = join(tree, "tmp");
  mkdirSync(tmp, { recursive: true });
  const dir = mkdtempSync(join(tmp, "initrd-"));
  const root = join(dir, "root");
  for (const d of ["bin", "proc", "sys", "dev", "modules", "tmp"])
    mkdirSync(join(root, d), { recursive: true });
  copyFileSync(join(tree, "bin", "busybox"), join(root, "bin", "busybox"));
  chmodSync(join(root, "bin", "busybox"), 0o755);
  const version = modules.length > 0 ? kernelVersion(tree) : "";
  for (const name of modules) {
    const path = findModule(tree, version, name);
    const inTree = path.slice(tree.length);
    const out = join(root, "modules", `${name}.ko`);
    if (path.endsWith(".xz"))
      writeFileSync(out, execFileSync("chroot", [tree, "xz", "-dc", inTree], { maxBuffer: 64 << 20 }));
    else copyFileSync(path, out);
  }
  for (const [guestPath, hostPath] of Object.entries(files)) {
    const target = join(root, guestPath);
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(hostPath, target);
    chmodSync(target, 0o755);
  }
  writeFileSync(
    join(root, "init"),
    [
      "#!/bin/busybox sh",
      "/bin/busybox --install -s /bin",
      "export PATH=/bin",
      "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
      `echo ${BEGIN}`,
      script,
      `echo ${END}`,
      "poweroff -f",
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  const inChroot = dir.slice(tree.length);
  execFileSync("chroot", [
    tree,
    "sh",
    "-c",
    `cd ${inChroot}/root && find . | cpio -H newc -o --quiet > ${inChroot}/initrd.cpio`,
  ]);
  return { guestPath: `${inChroot}/initrd.cpio`, dir };
}

export async function bootGuest(options: BootOptions): Promise<BootResult> {
  const { tree } = options;
  const kernel = readdirSync(join(tree, "boot")).find((f) => f.startsWith("vmlinuz-"));
  if (!kernel) throw new Error(`no kernel image in ${tree}/boot`);
  const initrd = buildInitramfs(tree, options.script, options.modules ?? [], options.files ?? {});
  const args = [
    tree,
    "qemu-system-x86_64",
    "-accel",
    "tcg",
    "-m",
    String(options.memoryMiB ?? 256),
    "-nodefaults",
    "-display",
    "none",
    "-no-reboot",
    "-serial",
    "stdio",
    "-kernel",
    `/boot/${basename(kernel)}`,
    "-initrd",
    initrd.guestPath,
    "-append",
    "console=ttyS0 panic=-1 loglevel=4",
    ...(options.qemuArgs ?? []),
  ];
  let output = "";
  let timedOut = false;
  const child: ChildProcess = spawn("chroot", args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
  const onData = (d: Buffer) => {
    const text = d.toString();
    output += text;
    options.onOutput?.(text);
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const timer = setTimeout(() => {
    timedOut = true;
    if (child.pid) process.kill(-child.pid, "SIGKILL");
  }, options.timeoutMs ?? 120_000);
  const exitCode = await new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  clearTimeout(timer);
  rmSync(initrd.dir, { recursive: true, force: true });
  const values: Record<string, string> = {};
  const body = output.split(BEGIN)[1]?.split(END)[0] ?? "";
  for (const line of body.split(/\r?\n/)) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) values[m[1]!] = m[2]!;
  }
  return { output, exitCode, timedOut, values };
}

/** QEMU options for guest RAM the device can map (memfd, shared) on a q35 machine. */
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
