/**
 * What a guest driver sees of its platform: config space, MMIO, BAR memory the
 * platform maps straight in (pass-through), and an interrupt line. The project's
 * VMMs (the vfio-user client in tests, the simulated VMs) implement it.
 */
export interface PciBus {
  configRead(offset: number, size: 1 | 2 | 4): number;
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void;
  mmioRead(bar: number, offset: number, size: 1 | 2 | 4): number;
  mmioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void;
  /** The BAR's memory if the platform maps it directly, else undefined (then use mmio). */
  barMemory(bar: number): Uint8Array | undefined;
  /** Waits for the device's interrupt; true if one arrived within the timeout. */
  waitInterrupt(timeoutMs: number): boolean;
}

/** VFIO's index of the config-space region (the BARs are 0 to 5). */
const CONFIG_REGION = 7;

/**
 * A PciBus on anything that reads and writes region bytes (a vfio-user client,
 * a device in the same thread): the sized accesses are done once, here.
 */
export abstract class RegionBus implements PciBus {
  private readonly scratch = new Uint8Array(4);
  private readonly view = new DataView(this.scratch.buffer);
  /** Region accesses made (each a trap for a remote device). */
  traps = 0;

  protected abstract readRegion(region: number, offset: number, out: Uint8Array): void;
  protected abstract writeRegion(region: number, offset: number, data: Uint8Array): void;
  abstract barMemory(bar: number): Uint8Array | undefined;
  abstract waitInterrupt(timeoutMs: number): boolean;

  configRead(offset: number, size: 1 | 2 | 4): number {
    return this.read(CONFIG_REGION, offset, size);
  }

  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.write(CONFIG_REGION, offset, size, value);
  }

  mmioRead(bar: number, offset: number, size: 1 | 2 | 4): number {
    return this.read(bar, offset, size);
  }

  mmioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.write(bar, offset, size, value);
  }

  private read(region: number, offset: number, size: 1 | 2 | 4): number {
    this.traps++;
    this.readRegion(region, offset, this.scratch.subarray(0, size));
    return size === 1
      ? this.scratch[0]!
      : size === 2
        ? this.view.getUint16(0, true)
        : this.view.getUint32(0, true);
  }

  private write(region: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.traps++;
    this.view.setUint32(0, value >>> 0, true);
    this.writeRegion(region, offset, this.scratch.subarray(0, size));
  }
}
