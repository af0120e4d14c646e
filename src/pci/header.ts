/** The type-0 header: identity, command/status rules, BARs and the expansion ROM. */
import { Cfg, Command, ConfigSpace, Status } from "./config-space.js";
import { PciDeclarationError } from "./errors.js";

export type BarKind = "mem32" | "mem64" | "io";

export interface BarDeclaration {
  readonly index: number;
  /** Power of two; at least 16 bytes for memory (4 KiB to be mmap-able), 4..256 for I/O. */
  readonly size: number;
  readonly kind: BarKind;
  readonly prefetchable?: boolean;
}

export interface Identity {
  readonly vendorId: number;
  readonly deviceId: number;
  /** Base class, sub-class and programming interface, e.g. 0x030000 for VGA. */
  readonly classCode: number;
  readonly revision?: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
}

export const INTX_PIN_A = 1;

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/** Checks BAR declarations the way a PCI device must lay them out; throws on a broken definition. */
export function validateBars(bars: readonly BarDeclaration[]): void {
  const used = new Set<number>();
  for (const b of bars) {
    if (!Number.isInteger(b.index) || b.index < 0 || b.index > 5)
      throw new PciDeclarationError(`BAR index ${b.index} out of 0..5`);
    if (!isPowerOfTwo(b.size))
      throw new PciDeclarationError(`BAR${b.index} size ${b.size} is not a power of two`);
    if (b.kind === "io" && (b.size < 4 || b.size > 256))
      throw new PciDeclarationError(`I/O BAR${b.index} must be 4..256 bytes`);
    if (b.kind !== "io" && b.size < 16)
      throw new PciDeclarationError(`memory BAR${b.index} must be at least 16 bytes`);
    if (b.kind === "mem32" && b.size > 2 ** 31)
      throw new PciDeclarationError(`BAR${b.index} too large for 32 bits`);
    const slots = b.kind === "mem64" ? [b.index, b.index + 1] : [b.index];
    if (b.kind === "mem64" && b.index === 5)
      throw new PciDeclarationError("a 64-bit BAR cannot start at BAR5");
    for (const s of slots) {
      if (used.has(s)) throw new PciDeclarationError(`BAR slot ${s} declared twice`);
      used.add(s);
    }
  }
}

/** The low bits of a BAR register that say what it is. */
export function barTypeBits(b: BarDeclaration): number {
  if (b.kind === "io") return 0x1;
  return (b.kind === "mem64" ? 0x4 : 0) | (b.prefetchable ? 0x8 : 0);
}

/** Writes the header's reset values and masks. */
export function initHeader(
  cfg: ConfigSpace,
  id: Identity,
  bars: readonly BarDeclaration[],
  rom: number | undefined,
  intxPin: number,
): void {
  cfg.set16(Cfg.VENDOR_ID, id.vendorId);
  cfg.set16(Cfg.DEVICE_ID, id.deviceId);
  cfg.set8(Cfg.REVISION, id.revision ?? 0);
  cfg.set8(Cfg.CLASS_PROG, id.classCode & 0xff);
  cfg.set16(Cfg.CLASS_PROG + 1, (id.classCode >> 8) & 0xffff);
  cfg.set16(Cfg.SUBSYSTEM_VENDOR_ID, id.subsystemVendorId ?? id.vendorId);
  cfg.set16(Cfg.SUBSYSTEM_ID, id.subsystemId ?? 0);
  cfg.set8(Cfg.HEADER_TYPE, 0);
  cfg.set8(Cfg.INTERRUPT_PIN, intxPin);

  const hasIo = bars.some((b) => b.kind === "io");
  const hasMem = bars.some((b) => b.kind !== "io") || rom !== undefined;
  const commandMask =
    (hasIo ? Command.IO : 0) |
    (hasMem ? Command.MEMORY : 0) |
    Command.BUS_MASTER |
    Command.PARITY |
    Command.SERR |
    (intxPin ? Command.INTX_DISABLE : 0);
  cfg.mask(Cfg.COMMAND, 2, commandMask);
  cfg.mask(Cfg.STATUS, 2, 0, Status.W1C);
  cfg.mask(Cfg.CACHE_LINE_SIZE, 1, 0xff);
  cfg.mask(Cfg.INTERRUPT_LINE, 1, 0xff);

  for (const b of bars) {
    const at = Cfg.BAR0 + 4 * b.index;
    cfg.set32(at, barTypeBits(b));
    if (b.kind === "io") {
      cfg.mask(at, 4, ~(b.size - 1) & 0xfffffffc);
    } else if (b.kind === "mem32") {
      cfg.mask(at, 4, ~(b.size - 1) & 0xfffffff0);
    } else {
      const low = b.size >= 2 ** 32 ? 0 : ~(b.size - 1) & 0xfffffff0;
      const high = b.size > 2 ** 32 ? ~(Math.floor(b.size / 2 ** 32) - 1) >>> 0 : 0xffffffff;
      cfg.mask(at, 4, low);
      cfg.set32(at + 4, 0);
      cfg.mask(at + 4, 4, high);
    }
  }
  if (rom !== undefined) {
    if (!isPowerOfTwo(rom) || rom < 2048)
      throw new PciDeclarationError(`expansion ROM size ${rom} must be a power of two ≥ 2 KiB`);
    cfg.mask(Cfg.ROM_ADDRESS, 4, (~(rom - 1) & 0xfffff800) | 1);
  }
}

/** The address a BAR is programmed with (type bits stripped). */
export function barAddress(cfg: ConfigSpace, b: BarDeclaration): bigint {
  const at = Cfg.BAR0 + 4 * b.index;
  const low = cfg.u32(at) & (b.kind === "io" ? ~3 : ~0xf);
  const high = b.kind === "mem64" ? BigInt(cfg.u32(at + 4)) << 32n : 0n;
  return high | BigInt(low >>> 0);
}
