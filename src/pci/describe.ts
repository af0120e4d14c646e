/**
 * Decodes a PCI configuration space into a plain description (ids, class,
 * BAR types, capability chain), the way lspci reads it. Pure: bytes in, data out.
 */

export interface BarDescription {
  readonly index: number;
  readonly kind: "memory" | "io" | "none";
  readonly is64: boolean;
  readonly prefetchable: boolean;
  /** The address currently programmed (not the size). */
  readonly address: bigint;
}

export interface CapabilityDescription {
  readonly offset: number;
  readonly id: number;
  readonly name: string;
  readonly extended: boolean;
  /** A few decoded fields, e.g. MSI vector count, MSI-X table size. */
  readonly details: Record<string, string | number | boolean>;
}

export interface ConfigDescription {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly command: number;
  readonly status: number;
  readonly revision: number;
  readonly classCode: number;
  readonly headerType: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
  readonly interruptPin: number;
  readonly interruptLine: number;
  readonly bars: readonly BarDescription[];
  readonly romAddress: number;
  readonly capabilities: readonly CapabilityDescription[];
  /** Problems found while walking (a loop, a pointer outside the space). */
  readonly problems: readonly string[];
}

const capabilityNames: Record<number, string> = {
  0x01: "Power Management",
  0x02: "AGP",
  0x03: "Vital Product Data",
  0x04: "Slot Identification",
  0x05: "MSI",
  0x07: "PCI-X",
  0x09: "Vendor Specific",
  0x0a: "Debug port",
  0x0d: "Subsystem ID",
  0x10: "Express",
  0x11: "MSI-X",
  0x12: "SATA",
  0x13: "Advanced Features",
};

const extendedNames: Record<number, string> = {
  0x0001: "Advanced Error Reporting",
  0x0002: "Virtual Channel",
  0x0003: "Device Serial Number",
  0x000b: "Vendor Specific Extended",
  0x000d: "Access Control Services",
  0x000e: "Alternative Routing-ID",
  0x0010: "SR-IOV",
  0x0015: "Resizable BAR",
  0x001e: "L1 PM Substates",
};

export function describeConfig(config: Uint8Array): ConfigDescription {
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const u8 = (o: number) => (o < config.length ? v.getUint8(o) : 0);
  const u16 = (o: number) => (o + 2 <= config.length ? v.getUint16(o, true) : 0);
  const u32 = (o: number) => (o + 4 <= config.length ? v.getUint32(o, true) : 0);
  const problems: string[] = [];
  const headerType = u8(0x0e) & 0x7f;
  const bars: BarDescription[] = [];
  const barCount = headerType === 0 ? 6 : headerType === 1 ? 2 : 0;
  for (let i = 0; i < barCount; i++) {
    const raw = u32(0x10 + i * 4);
    if (raw & 1) {
      bars.push({
        index: i,
        kind: "io",
        is64: false,
        prefetchable: false,
        address: BigInt((raw & ~3) >>> 0),
      });
      continue;
    }
    const is64 = ((raw >> 1) & 3) === 2;
    const high = is64 && i < 5 ? BigInt(u32(0x14 + i * 4)) << 32n : 0n;
    bars.push({
      index: i,
      kind: "memory",
      is64,
      prefetchable: (raw & 8) !== 0,
      address: high | BigInt((raw & ~0xf) >>> 0),
    });
    if (is64) {
      i++;
      bars.push({ index: i, kind: "none", is64: false, prefetchable: false, address: 0n });
    }
  }
  const capabilities: CapabilityDescription[] = [];
  if (u16(0x06) & 0x10) {
    const seen = new Set<number>();
    let ptr = u8(0x34) & 0xfc;
    while (ptr !== 0) {
      if (ptr < 0x40 || ptr > 0xfc || ptr + 2 > config.length) {
        problems.push(`capability pointer 0x${ptr.toString(16)} outside the device-specific area`);
        break;
      }
      if (seen.has(ptr)) {
        problems.push(`capability list loops at 0x${ptr.toString(16)}`);
        break;
      }
      seen.add(ptr);
      const id = u8(ptr);
      capabilities.push({
        offset: ptr,
        id,
        name: capabilityNames[id] ?? `Unknown (0x${id.toString(16)})`,
        extended: false,
        details: capabilityDetails(id, ptr, u8, u16, u32),
      });
      ptr = u8(ptr + 1) & 0xfc;
    }
  }
  if (config.length >= 0x1000 && u32(0x100) !== 0 && u32(0x100) !== 0xffffffff) {
    const seen = new Set<number>();
    let ptr = 0x100;
    while (ptr !== 0) {
      if (ptr < 0x100 || ptr > 0xffc) {
        problems.push(`extended capability pointer 0x${ptr.toString(16)} out of range`);
        break;
      }
      if (seen.has(ptr)) {
        problems.push(`extended capability list loops at 0x${ptr.toString(16)}`);
        break;
      }
      seen.add(ptr);
      const header = u32(ptr);
      const id = header & 0xffff;
      capabilities.push({
        offset: ptr,
        id,
        name: extendedNames[id] ?? `Unknown (0x${id.toString(16)})`,
        extended: true,
        details: { version: (header >> 16) & 0xf },
      });
      ptr = (header >>> 20) & 0xffc;
    }
  }
  return {
    vendorId: u16(0),
    deviceId: u16(2),
    command: u16(4),
    status: u16(6),
    revision: u8(8),
    classCode: (u8(0x0b) << 16) | (u8(0x0a) << 8) | u8(0x09),
    headerType: u8(0x0e),
    subsystemVendorId: headerType === 0 ? u16(0x2c) : 0,
    subsystemId: headerType === 0 ? u16(0x2e) : 0,
    interruptPin: u8(0x3d),
    interruptLine: u8(0x3c),
    bars,
    romAddress: headerType === 0 ? u32(0x30) : 0,
    capabilities,
    problems,
  };
}

function capabilityDetails(
  id: number,
  at: number,
  u8: (o: number) => number,
  u16: (o: number) => number,
  u32: (o: number) => number,
): Record<string, string | number | boolean> {
  switch (id) {
    case 0x01: {
      const pmc = u16(at + 2);
      return {
        version: pmc & 7,
        d1: (pmc & 0x200) !== 0,
        d2: (pmc & 0x400) !== 0,
        powerState: `D${u16(at + 4) & 3}`,
      };
    }
    case 0x05: {
      const ctl = u16(at + 2);
      return {
        enabled: (ctl & 1) !== 0,
        vectors: 1 << ((ctl >> 1) & 7),
        enabledVectors: 1 << ((ctl >> 4) & 7),
        address64: (ctl & 0x80) !== 0,
        perVectorMask: (ctl & 0x100) !== 0,
      };
    }
    case 0x10: {
      const caps = u16(at + 2);
      const types = [
        "Endpoint",
        "Legacy Endpoint",
        "?",
        "?",
        "Root Port",
        "Upstream Port",
        "Downstream Port",
        "PCI bridge",
        "PCIe bridge",
        "Root Complex Integrated Endpoint",
        "Root Complex Event Collector",
      ];
      return { version: caps & 0xf, type: types[(caps >> 4) & 0xf] ?? "?" };
    }
    case 0x11: {
      const ctl = u16(at + 2);
      const table = u32(at + 4);
      const pba = u32(at + 8);
      return {
        enabled: (ctl & 0x8000) !== 0,
        functionMask: (ctl & 0x4000) !== 0,
        vectors: (ctl & 0x7ff) + 1,
        tableBar: table & 7,
        tableOffset: table & ~7,
        pbaBar: pba & 7,
        pbaOffset: pba & ~7,
      };
    }
    case 0x09:
      return { length: u8(at + 2) };
    default:
      return {};
  }
}

const classNames: Record<number, string> = {
  0x0000: "Non-VGA unclassified device",
  0x0100: "SCSI storage controller",
  0x0106: "SATA controller",
  0x0108: "Non-Volatile memory controller",
  0x0200: "Ethernet controller",
  0x0300: "VGA compatible controller",
  0x0302: "3D controller",
  0x0380: "Display controller",
  0x0400: "Multimedia video controller",
  0x0403: "Audio device",
  0x0600: "Host bridge",
  0x0604: "PCI bridge",
  0x0880: "System peripheral",
  0x1180: "Signal processing controller",
  0xff00: "Unassigned class",
};

export function className(classCode: number): string {
  return classNames[classCode >> 8] ?? `Class ${(classCode >> 8).toString(16).padStart(4, "0")}`;
}
