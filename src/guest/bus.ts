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
