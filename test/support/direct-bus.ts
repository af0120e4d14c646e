/**
 * A PciBus straight onto a PciDevice in the same thread (no socket): for unit
 * tests of the mediator, where the scheduler runs when the guest waits.
 */
import type { PciBus } from "../../src/guest/index.js";
import type { PciDevice } from "../../src/pci/index.js";
import { PciRegion } from "../../src/vfio-user/index.js";

export class DirectBus implements PciBus {
  private readonly b = new Uint8Array(4);
  private readonly v = new DataView(this.b.buffer);
  constructor(
    private readonly device: PciDevice,
    private readonly runPending: () => void,
  ) {}
  configRead(offset: number, size: 1 | 2 | 4): number {
    return this.read(PciRegion.CONFIG, offset, size);
  }
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.write(PciRegion.CONFIG, offset, size, value);
  }
  mmioRead(bar: number, offset: number, size: 1 | 2 | 4): number {
    return this.read(bar, offset, size);
  }
  mmioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.write(bar, offset, size, value);
  }
  barMemory(bar: number): Uint8Array | undefined {
    return bar === 0 ? this.device.barMemory(0) : undefined;
  }
  waitInterrupt(): boolean {
    this.runPending();
    return false;
  }
  private read(region: number, offset: number, size: number): number {
    this.device.regionRead(region, offset, size, this.b, 0);
    return size === 1 ? this.b[0]! : size === 2 ? this.v.getUint16(0, true) : this.v.getUint32(0, true);
  }
  private write(region: number, offset: number, size: number, value: number): void {
    this.v.setUint32(0, value >>> 0, true);
    this.device.regionWrite(region, offset, size, this.b, 0);
  }
}
