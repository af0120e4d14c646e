/**
 * The parent GPU's MMIO register map (BAR-style offsets). The Bochs display
 * and engine registers are the vGPU's too and come from abi/; the rest is the
 * parent's own, which no guest ever sees.
 */
import { BochsMmio, EngineReg } from "../abi/index.js";

export const Reg = {
  GPU_ID: 0x0000,
  GPU_CAPS: 0x0004,
  LOCAL_MEMORY_SIZE: 0x0008,
  GTT_ENTRIES: 0x000c,

  // Interrupts: raw status, mask, latched identity (write 1 to clear), enable.
  ISR: 0x0100,
  IMR: 0x0104,
  IIR: 0x0108,
  IER: 0x010c,

  // Display: Bochs/QEMU VBE "DISPI" registers as 16-bit MMIO, QEMU's extension block.
  DISPI: BochsMmio.DISPI,
  QEXT_SIZE: BochsMmio.QEXT_SIZE,
  QEXT_BYTEORDER: BochsMmio.QEXT_BYTEORDER,
  /** Local-memory offset the display scans out from (the parent's own addition). */
  DISPLAY_BASE: 0x0700,
  VBLANK_COUNT: 0x0704,

  // Render engine (command streamer), at the offsets a vGPU's virtual engine has too.
  ...EngineReg,
  BB_ADDR: 0x2020,

  // GTT fault reporting; the GTT itself is written through `Gtt`, or at GTT_BASE.
  FAULT_ADDR_LO: 0x3000,
  FAULT_ADDR_HI: 0x3004,
  GTT_BASE: 0x100000,
} as const;

export const GPU_ID_VALUE = 0x4d475055; // "UPGM"
