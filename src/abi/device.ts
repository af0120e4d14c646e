/**
 * How a vGPU presents itself on PCI: a Bochs display (1234:1111, so stock
 * guests bind the bochs DRM driver) whose BAR0 is its slice of local memory
 * and BAR2 its MMIO, with a vendor capability and a paravirtual info block
 * that tell an enlightened driver where its own resources are.
 */
import { BAR2_SIZE, Bar2, Dispi, QEXT_BLOCK_SIZE } from "./registers.js";

export const PciIdentity = {
  VENDOR_ID: 0x1234,
  DEVICE_ID: 0x1111,
  /** Display controller, "other". */
  CLASS_CODE: 0x038000,
  REVISION: 2,
  SUBSYSTEM_VENDOR_ID: 0x1af4,
  SUBSYSTEM_ID: 0x1100,
} as const;

/** BAR indexes: BAR0 is local memory (its size is the vGPU type's), BAR2 the MMIO registers (`Bar2`). */
export const VgpuBar = { LOCAL_MEMORY: 0, MMIO: 2 } as const;

/** "MGPV" as a little-endian dword: the PV block's and the vendor capability's magic. */
export const PV_MAGIC = 0x5650474d;
export const PV_VERSION = 1;

/** The vendor-specific capability's payload: the magic, the PV version, a reserved byte. */
export const VENDOR_CAPABILITY = Uint8Array.of(
  PV_MAGIC & 0xff,
  (PV_MAGIC >>> 8) & 0xff,
  (PV_MAGIC >>> 16) & 0xff,
  PV_MAGIC >>> 24,
  PV_VERSION,
  0,
);

/** Bytes of BAR2 the PV block spans (reads past its fields return 0). */
export const PV_INFO_SIZE = 0x100;

/**
 * BAR2's register blocks (offset, bytes): the Bochs display's (QEMU
 * hw/display/bochs-display.c: EDID, VGA ioports, DISPI, QEMU extended
 * registers), then the vGPU's own. Offsets no block covers read as zero.
 */
export const Bar2Block = {
  EDID: { offset: Bar2.EDID, size: 0x400 },
  VGA_IOPORTS: { offset: Bar2.VGA_IOPORTS, size: 0x20 },
  DISPI: { offset: Bar2.DISPI, size: Dispi.COUNT * 2 },
  QEXT: { offset: Bar2.QEXT_SIZE, size: QEXT_BLOCK_SIZE },
  PV_INFO: { offset: Bar2.PV_INFO, size: PV_INFO_SIZE },
  /** The virtual engine: ring, status, error, reset and GPR registers. */
  ENGINE: { offset: Bar2.ENGINE, size: Bar2.ISR - Bar2.ENGINE },
  /** The virtual interrupt registers. */
  IRQ: { offset: Bar2.ISR, size: 0x100 },
  GTT: { offset: Bar2.GTT, size: BAR2_SIZE - Bar2.GTT },
} as const;
