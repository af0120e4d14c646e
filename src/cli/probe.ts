/**
 * `mgpu probe <socket>`: connects to any vfio-user server as a client and
 * describes the device the way `lspci -vv` would. Reads only: it never writes
 * config space (BAR sizes come from region info, as a VFIO VMM learns them).
 */
import { closeFd } from "../sys/index.js";
import {
  Client,
  DEVICE_FEATURE_GET,
  DEVICE_FLAGS_PCI,
  DEVICE_FLAGS_RESET,
  Feature,
  IRQ_INFO_AUTOMASKED,
  IRQ_INFO_EVENTFD,
  IRQ_INFO_MASKABLE,
  IRQ_INFO_NORESIZE,
  MIGRATION_P2P,
  MIGRATION_PRE_COPY,
  MIGRATION_STOP_COPY,
  PciRegion,
  REGION_INFO_FLAG_MMAP,
  REGION_INFO_FLAG_READ,
  REGION_INFO_FLAG_WRITE,
  type RegionInfo,
  VfioUserError,
} from "../vfio-user/index.js";
import { type ConfigDescription, className, describeConfig } from "../pci/describe.js";
import { quietLogger } from "../base/index.js";

export interface ProbeResult {
  readonly socket: string;
  readonly protocol: { readonly major: number; readonly minor: number; readonly capabilities?: string };
  readonly device: {
    readonly flags: number;
    readonly pci: boolean;
    readonly reset: boolean;
    readonly numRegions: number;
    readonly numIrqs: number;
  };
  readonly config?: ConfigDescription;
  readonly regions: readonly RegionInfo[];
  readonly irqs: readonly {
    readonly index: number;
    readonly name: string;
    readonly count: number;
    readonly flags: number;
  }[];
  readonly migration: { readonly supported: boolean; readonly flags: number; readonly detail: string };
}

const regionNames = ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"];
const irqNames = ["INTx", "MSI", "MSI-X", "ERR", "REQ"];

/** Asks a request that a device may not support; VfioUserError means "not there". */
function optional<T>(fn: () => T): T | VfioUserError {
  try {
    return fn();
  } catch (e) {
    if (e instanceof VfioUserError) return e;
    throw e;
  }
}

export function probe(socket: string): ProbeResult {
  const client = Client.connect(socket, { logger: quietLogger });
  try {
    const info = client.getDeviceInfo();
    const regions: RegionInfo[] = [];
    for (let i = 0; i < info.numRegions; i++) {
      const r = optional(() => client.getRegionInfo(i));
      if (r instanceof VfioUserError) continue;
      const { fd, ...region } = r;
      if (fd !== undefined) closeFd(fd);
      regions.push(region);
    }
    let config: ConfigDescription | undefined;
    const cfg = regions.find((r) => r.index === PciRegion.CONFIG);
    if (info.flags & DEVICE_FLAGS_PCI && cfg && cfg.size > 0) {
      const bytes = new Uint8Array(Math.min(cfg.size, 4096));
      client.regionRead(PciRegion.CONFIG, 0, bytes);
      config = describeConfig(bytes);
    }
    const irqs = [];
    for (let i = 0; i < info.numIrqs; i++) {
      const irq = optional(() => client.getIrqInfo(i));
      if (irq instanceof VfioUserError) continue;
      irqs.push({ index: i, name: irqNames[i] ?? `IRQ${i}`, count: irq.count, flags: irq.flags });
    }
    const mig = optional(() => client.feature(Feature.MIGRATION | DEVICE_FEATURE_GET, new Uint8Array(0), 8));
    let migration: ProbeResult["migration"];
    if (mig instanceof VfioUserError) {
      migration = { supported: false, flags: 0, detail: `not supported (${mig.code})` };
    } else {
      const flags = mig.length >= 4 ? new DataView(mig.buffer, mig.byteOffset).getUint32(0, true) : 0;
      const states = [
        flags & MIGRATION_STOP_COPY ? "STOP_COPY" : "",
        flags & MIGRATION_P2P ? "P2P" : "",
        flags & MIGRATION_PRE_COPY ? "PRE_COPY" : "",
      ].filter(Boolean);
      migration = {
        supported: true,
        flags,
        detail: `VFIO migration v2 (${states.join(", ") || "no states"})`,
      };
    }
    return {
      socket,
      protocol: {
        major: client.version.major,
        minor: client.version.minor,
        ...(client.version.json !== undefined ? { capabilities: client.version.json } : {}),
      },
      device: {
        flags: info.flags,
        pci: (info.flags & DEVICE_FLAGS_PCI) !== 0,
        reset: (info.flags & DEVICE_FLAGS_RESET) !== 0,
        numRegions: info.numRegions,
        numIrqs: info.numIrqs,
      },
      ...(config ? { config } : {}),
      regions,
      irqs,
      migration,
    };
  } finally {
    client.close();
  }
}

const hex = (v: number | bigint, width: number) => v.toString(16).padStart(width, "0");

function size(bytes: number): string {
  for (const [unit, shift] of [
    ["G", 30],
    ["M", 20],
    ["K", 10],
  ] as const)
    if (bytes >= 2 ** shift && bytes % 2 ** shift === 0) return `${bytes / 2 ** shift}${unit}`;
  return `${bytes}`;
}

const plusMinus = (on: boolean, name: string) => `${name}${on ? "+" : "-"}`;

/** Renders a probe in lspci -vv's shape. */
export function formatProbe(p: ProbeResult): string {
  const out: string[] = [];
  const c = p.config;
  if (c) {
    out.push(
      `${p.socket}: ${className(c.classCode)} [${hex(c.classCode >> 8, 4)}]: ` +
        `Device ${hex(c.vendorId, 4)}:${hex(c.deviceId, 4)} (rev ${hex(c.revision, 2)})`,
    );
    if (c.subsystemVendorId || c.subsystemId)
      out.push(`\tSubsystem: Device ${hex(c.subsystemVendorId, 4)}:${hex(c.subsystemId, 4)}`);
    const cmd = c.command;
    out.push(
      `\tControl: ${plusMinus((cmd & 1) !== 0, "I/O")} ${plusMinus((cmd & 2) !== 0, "Mem")} ` +
        `${plusMinus((cmd & 4) !== 0, "BusMaster")} ${plusMinus((cmd & 0x400) !== 0, "DisINTx")}`,
    );
    out.push(
      `\tStatus: ${plusMinus((c.status & 0x10) !== 0, "Cap")} ${plusMinus((c.status & 0x8) !== 0, "INTx")}`,
    );
    if (c.interruptPin)
      out.push(
        `\tInterrupt: pin ${String.fromCharCode(64 + c.interruptPin)} routed to IRQ ${c.interruptLine}`,
      );
  } else {
    out.push(`${p.socket}: non-PCI vfio-user device (flags 0x${p.device.flags.toString(16)})`);
  }
  for (const r of p.regions) {
    if (r.size === 0) continue;
    const access =
      (r.flags & REGION_INFO_FLAG_READ ? "r" : "-") +
      (r.flags & REGION_INFO_FLAG_WRITE ? "w" : "-") +
      (r.flags & REGION_INFO_FLAG_MMAP ? "m" : "-");
    const bar = r.index <= PciRegion.BAR5 ? c?.bars.find((b) => b.index === r.index) : undefined;
    if (bar) {
      const kind =
        bar.kind === "io"
          ? "I/O ports"
          : `Memory (${bar.is64 ? "64-bit" : "32-bit"}, ${bar.prefetchable ? "prefetchable" : "non-prefetchable"})`;
      out.push(`\tRegion ${r.index}: ${kind} at ${hex(bar.address, 8)} [size=${size(r.size)}] [${access}]`);
    } else {
      out.push(`\t${regionNames[r.index] ?? `Region ${r.index}`}: [size=${size(r.size)}] [${access}]`);
    }
    for (const a of r.sparseMmap ?? [])
      out.push(`\t\tmmap area: offset 0x${a.offset.toString(16)} size ${size(a.size)}`);
    if (r.type) out.push(`\t\ttype ${r.type.type} subtype ${r.type.subtype}`);
  }
  for (const cap of c?.capabilities ?? []) {
    const details = Object.entries(cap.details)
      .map(([k, v]) => `${k}=${typeof v === "boolean" ? (v ? "+" : "-") : v}`)
      .join(" ");
    out.push(
      `\tCapabilities: [${hex(cap.offset, cap.extended ? 3 : 2)}] ${cap.name}${details ? ": " + details : ""}`,
    );
  }
  for (const problem of c?.problems ?? []) out.push(`\t!! ${problem}`);
  for (const irq of p.irqs) {
    if (irq.count === 0) continue;
    const f = irq.flags;
    const flags = [
      f & IRQ_INFO_EVENTFD ? "eventfd" : "",
      f & IRQ_INFO_MASKABLE ? "maskable" : "",
      f & IRQ_INFO_AUTOMASKED ? "automasked" : "",
      f & IRQ_INFO_NORESIZE ? "noresize" : "",
    ].filter(Boolean);
    out.push(`\tIRQ ${irq.name}: count=${irq.count}${flags.length ? " [" + flags.join(" ") + "]" : ""}`);
  }
  out.push(`\tReset: ${p.device.reset ? "supported" : "not supported"}`);
  out.push(`\tMigration: ${p.migration.detail}`);
  out.push(
    `\tProtocol: vfio-user ${p.protocol.major}.${p.protocol.minor} ${p.protocol.capabilities ?? ""}`.trimEnd(),
  );
  return out.join("\n");
}
