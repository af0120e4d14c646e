/** The Bochs display's register blocks in BAR2, on the vGPU's own DisplayEngine. */
import { QEXT_BLOCK_SIZE } from "../../abi/index.js";
import type { DisplayEngine } from "../../gpu/index.js";
import { type RegionHandler, valueRegisters } from "../../pci/index.js";

/** DISPI: 16-bit registers at index * 2; a 4-byte access covers two. */
export function dispiRegisters(display: DisplayEngine): RegionHandler {
  return valueRegisters({
    read(offset, count) {
      const index = offset >> 1;
      let value = display.readDispi(index);
      if (count === 4) value |= display.readDispi(index + 1) << 16;
      if (offset & 1) value >>>= 8;
      return value;
    },
    write(offset, count, value) {
      const index = offset >> 1;
      display.writeDispi(index, value & 0xffff);
      if (count === 4) display.writeDispi(index + 1, value >>> 16);
    },
  });
}

/** QEMU's extended registers: the block's size, then the framebuffer byte order. */
export function qextRegisters(display: DisplayEngine): RegionHandler {
  return valueRegisters({
    read: (offset) => (offset === 0 ? QEXT_BLOCK_SIZE : offset === 4 ? display.readByteOrder() : 0),
    write: (offset, _count, value) => {
      if (offset === 4) display.writeByteOrder(value);
    },
  });
}
