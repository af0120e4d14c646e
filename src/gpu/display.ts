/**
 * The display engine: Bochs/QEMU VBE "DISPI" registers (so the stock Linux
 * bochs DRM driver, SeaBIOS and OVMF can drive it), QEMU's framebuffer
 * byte-order extension, scan-out from local memory to RGBA, and vblank.
 */
import { PNG } from "pngjs";
import { DISPI_ID5, Dispi, DispiEnable, QEXT_BIG_ENDIAN, QEXT_LITTLE_ENDIAN } from "../abi/index.js";

export interface DisplayLimits {
  readonly maxWidth: number;
  readonly maxHeight: number;
  /** Bytes of memory the display may scan out from. */
  readonly memorySize: number;
}

export interface Frame {
  readonly width: number;
  readonly height: number;
  /** RGBA, 4 bytes per pixel. */
  readonly rgba: Uint8Array;
}

export class DisplayEngine {
  readonly regs = new Uint16Array(Dispi.COUNT);
  bigEndian = false;
  vblanks = 0;

  constructor(readonly limits: DisplayLimits) {
    this.reset();
  }

  reset(): void {
    this.regs.fill(0);
    this.regs[Dispi.ID] = DISPI_ID5;
    this.regs[Dispi.BPP] = 32;
    this.regs[Dispi.VIDEO_MEMORY_64K] = Math.min(0xffff, Math.floor(this.limits.memorySize / 65536));
    this.bigEndian = false;
  }

  get enabled(): boolean {
    return (this.regs[Dispi.ENABLE]! & DispiEnable.ENABLED) !== 0;
  }

  readDispi(index: number): number {
    if (index >= Dispi.COUNT) return 0;
    // GETCAPS makes XRES/YRES/BPP read back the maximums.
    if (this.regs[Dispi.ENABLE]! & DispiEnable.GETCAPS) {
      if (index === Dispi.XRES) return this.limits.maxWidth;
      if (index === Dispi.YRES) return this.limits.maxHeight;
      if (index === Dispi.BPP) return 32;
    }
    return this.regs[index]!;
  }

  writeDispi(index: number, value: number): void {
    value &= 0xffff;
    switch (index) {
      case Dispi.ID:
        // Drivers write the version they speak; we keep answering ID5.
        return;
      case Dispi.XRES:
        this.regs[index] = Math.min(value, this.limits.maxWidth);
        return;
      case Dispi.YRES:
        this.regs[index] = Math.min(value, this.limits.maxHeight);
        return;
      case Dispi.BPP:
        if (value === 8 || value === 15 || value === 16 || value === 24 || value === 32)
          this.regs[index] = value;
        return;
      case Dispi.ENABLE: {
        const wasEnabled = this.enabled;
        this.regs[index] =
          value &
          (DispiEnable.ENABLED |
            DispiEnable.GETCAPS |
            DispiEnable.DAC8 |
            DispiEnable.LFB |
            DispiEnable.NOCLEARMEM);
        // Enabling resets the virtual size to the mode, as VBE does.
        if (!wasEnabled && this.enabled) {
          this.regs[Dispi.VIRT_WIDTH] = this.regs[Dispi.XRES]!;
          this.regs[Dispi.VIRT_HEIGHT] = this.regs[Dispi.YRES]!;
          this.regs[Dispi.X_OFFSET] = 0;
          this.regs[Dispi.Y_OFFSET] = 0;
        }
        return;
      }
      case Dispi.VIRT_WIDTH:
      case Dispi.X_OFFSET:
      case Dispi.Y_OFFSET:
      case Dispi.BANK:
        this.regs[index] = value;
        // The virtual height follows from the memory and the virtual width.
        if (index === Dispi.VIRT_WIDTH) {
          const stride = this.stride;
          this.regs[Dispi.VIRT_HEIGHT] = stride
            ? Math.min(0xffff, Math.floor(this.limits.memorySize / stride))
            : 0;
        }
        return;
      default:
        return; // VIRT_HEIGHT and VIDEO_MEMORY_64K are read-only
    }
  }

  readByteOrder(): number {
    return this.bigEndian ? QEXT_BIG_ENDIAN : QEXT_LITTLE_ENDIAN;
  }

  writeByteOrder(value: number): void {
    if (value === QEXT_BIG_ENDIAN) this.bigEndian = true;
    else if (value === QEXT_LITTLE_ENDIAN) this.bigEndian = false;
  }

  get width(): number {
    return this.regs[Dispi.XRES]!;
  }
  get height(): number {
    return this.regs[Dispi.YRES]!;
  }
  get bpp(): number {
    return this.regs[Dispi.BPP]!;
  }
  /** Bytes per line of the (virtual) framebuffer. */
  get stride(): number {
    return (Math.max(this.regs[Dispi.VIRT_WIDTH]!, this.width) * this.bpp) / 8;
  }
  /** Byte offset of the visible top-left pixel inside the framebuffer. */
  get scanoutOffset(): number {
    return this.regs[Dispi.Y_OFFSET]! * this.stride + (this.regs[Dispi.X_OFFSET]! * this.bpp) / 8;
  }

  /**
   * Converts the visible image to RGBA. `memory` is the framebuffer's backing
   * store starting at its base; pixels outside it read as black.
   */
  scanout(memory: Uint8Array): Frame {
    const width = this.enabled ? this.width : 0;
    const height = this.enabled ? this.height : 0;
    const rgba = new Uint8Array(width * height * 4);
    const bpp = this.bpp;
    const stride = this.stride;
    const base = this.scanoutOffset;
    for (let y = 0; y < height; y++) {
      const row = base + y * stride;
      for (let x = 0; x < width; x++) {
        const o = (y * width + x) * 4;
        rgba[o + 3] = 0xff;
        if (bpp === 32 || bpp === 24) {
          const p = row + x * (bpp / 8);
          if (p + bpp / 8 > memory.length) continue;
          if (this.bigEndian && bpp === 32) {
            rgba[o] = memory[p + 1]!;
            rgba[o + 1] = memory[p + 2]!;
            rgba[o + 2] = memory[p + 3]!;
          } else {
            rgba[o] = memory[p + 2]!;
            rgba[o + 1] = memory[p + 1]!;
            rgba[o + 2] = memory[p]!;
          }
        } else if (bpp === 16 || bpp === 15) {
          const p = row + x * 2;
          if (p + 2 > memory.length) continue;
          const v = this.bigEndian ? (memory[p]! << 8) | memory[p + 1]! : memory[p]! | (memory[p + 1]! << 8);
          const g6 = bpp === 16;
          rgba[o] = (((v >> (g6 ? 11 : 10)) & 0x1f) * 255) / 31;
          rgba[o + 1] = g6 ? (((v >> 5) & 0x3f) * 255) / 63 : (((v >> 5) & 0x1f) * 255) / 31;
          rgba[o + 2] = ((v & 0x1f) * 255) / 31;
        }
      }
    }
    return { width, height, rgba };
  }
}

/** Encodes a frame as PNG. */
export function frameToPng(frame: Frame): Buffer {
  const png = new PNG({ width: Math.max(frame.width, 1), height: Math.max(frame.height, 1) });
  if (frame.width > 0 && frame.height > 0) png.data.set(frame.rgba);
  return PNG.sync.write(png);
}

/** Decodes a PNG into a frame (for checks by pixel value). */
export function pngToFrame(data: Uint8Array): Frame {
  const png = PNG.sync.read(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  return { width: png.width, height: png.height, rgba: new Uint8Array(png.data) };
}
