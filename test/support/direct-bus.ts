/**
 * A PciBus straight onto a PciDevice in the same thread (no socket): for unit
 * tests of the mediator, where the scheduler runs when the guest waits.
 */
import { RegionBus } from "../../src/guest/bus.js";
import type { PciDevice } from "../../src/pci/index.js";

export class DirectBus extends RegionBus {
  constructor(
    private readonly device: PciDevice,
    private readonly runPending: () => void,
  ) {
    super();
  }
  protected readRegion(region: number, offset: number, out: Uint8Array): void {
    this.device.regionRead(region, offset, out.length, out, 0);
  }
  protected writeRegion(region: number, offset: number, data: Uint8Array): void {
    this.device.regionWrite(region, offset, data.length, data, 0);
  }
  barMemory(bar: number): Uint8Array | undefined {
    return bar === 0 ? this.device.barMemory(0) : undefined;
  }
  waitInterrupt(): boolean {
    this.runPending();
    return false;
  }
}
