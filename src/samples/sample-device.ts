/**
 * The toolkit's whole API in one small device ("mgpu sample", 1234:4d53):
 * - config space: PCIe endpoint with PM, MSI-X and a vendor capability;
 * - BAR0 (4 KiB, trapped): a register table, with the MSI-X table and PBA at 0x800/0xc00;
 * - BAR2 (1 MiB, 64-bit prefetchable): memory from a memfd, mmap-able by the VMM;
 * - DMA on a doorbell write: 1 fills guest memory with a pattern, 2 checksums it,
 *   3 copies the start of BAR2 into guest memory, 4 checksums like 2 without
 *   waiting on the VMM (asynchronous DMA: the loop serves others meanwhile);
 *   each raises MSI-X vector 0;
 * - migration: its registers and BAR2 travel in the migration stream.
 */
import { MgpuError } from "../base/index.js";
import { closeFd, createMemfd } from "../sys/index.js";
import { PciDevice, RegisterFile } from "../pci/index.js";

export const SAMPLE = { vendorId: 0x1234, deviceId: 0x4d53, id: 0x4d475053 /* "SPGM" */ } as const;
export const Reg = {
  ID: 0x00,
  SCRATCH: 0x04,
  DOORBELL: 0x08,
  DMA_LO: 0x10,
  DMA_HI: 0x14,
  DMA_LEN: 0x18,
  SEED: 0x1c,
  STATUS: 0x20,
  CHECKSUM: 0x24,
  ERROR: 0x28,
} as const;
export const STATUS_DONE = 1;
const BAR2_SIZE = 1 << 20;

/** A migration stream whose device state is not this device's size. */
export class SampleStateError extends MgpuError<"EBADSTATE"> {
  constructor(got: number, expected: number) {
    super("EBADSTATE", `device state of ${got} bytes, expected ${expected}`);
  }
}

export class SampleDevice {
  readonly pci: PciDevice;
  readonly regs: RegisterFile;
  readonly memfd = createMemfd("sample-bar2", BAR2_SIZE);

  constructor() {
    const doorbell = (command: number) => this.doorbell(command);
    this.regs = new RegisterFile(0x800, [
      { offset: Reg.ID, name: "ID", reset: SAMPLE.id, writable: 0 },
      { offset: Reg.SCRATCH, name: "SCRATCH" },
      { offset: Reg.DOORBELL, name: "DOORBELL", write: doorbell },
      { offset: Reg.DMA_LO, name: "DMA_LO" },
      { offset: Reg.DMA_HI, name: "DMA_HI" },
      { offset: Reg.DMA_LEN, name: "DMA_LEN" },
      { offset: Reg.SEED, name: "SEED" },
      { offset: Reg.STATUS, name: "STATUS", writable: 0, w1c: STATUS_DONE },
      { offset: Reg.CHECKSUM, name: "CHECKSUM", writable: 0 },
      { offset: Reg.ERROR, name: "ERROR", writable: 0 },
    ]);
    this.pci = new PciDevice({
      identity: { vendorId: SAMPLE.vendorId, deviceId: SAMPLE.deviceId, classCode: 0xff0000, revision: 1 },
      pcie: true,
      intx: true,
      bars: [
        { index: 0, size: 0x1000, kind: "mem32", handler: this.regs },
        { index: 2, size: BAR2_SIZE, kind: "mem64", prefetchable: true, memory: { fd: this.memfd } },
      ],
      msix: { vectors: 4, bar: 0, tableOffset: 0x800, pbaOffset: 0xc00 },
      vendorCapability: new TextEncoder().encode("mgpu"),
      err: true,
      req: true,
      migration: {
        hooks: { save: () => this.save(), load: (s) => this.load(s) },
        support: { preCopy: true, p2p: true },
      },
      onReset: () => this.regs.reset(),
    });
  }

  private doorbell(command: number): void {
    if (this.pci.migration && !this.pci.migration.running) return; // stopped for migration: no side effects
    const address = BigInt(this.regs.get("DMA_LO")) | (BigInt(this.regs.get("DMA_HI")) << 32n);
    const length = Math.min(this.regs.get("DMA_LEN"), BAR2_SIZE);
    const buffer = new Uint8Array(length);
    try {
      if (command === 1) {
        const seed = this.regs.get("SEED");
        for (let i = 0; i < length; i++) buffer[i] = (seed + i * 7) & 0xff;
        this.pci.dma.write(address, buffer);
      } else if (command === 2) {
        this.pci.dma.read(address, buffer);
        this.regs.set("CHECKSUM", checksum(buffer));
      } else if (command === 3) {
        this.pci.dma.write(address, this.pci.barMemory(2).subarray(0, length));
      } else if (command === 4) {
        // As 2, without waiting on the VMM: the device is busy until the data is in.
        this.pci.dma.readAsync(address, buffer, (error) => {
          if (error) this.regs.set("ERROR", error.errno);
          else this.regs.set("CHECKSUM", checksum(buffer));
          this.regs.set("STATUS", this.regs.get("STATUS") | STATUS_DONE);
          this.pci.irqs.notify(0);
        });
        this.regs.set("ERROR", 0);
        return;
      }
      this.regs.set("ERROR", 0);
    } catch (e) {
      // A failed DMA is the device's error, reported in a register, not the VMM's.
      this.regs.set("ERROR", (e as { errno?: number }).errno ?? 5);
    }
    this.regs.set("STATUS", this.regs.get("STATUS") | STATUS_DONE);
    this.pci.irqs.notify(0);
  }

  private save(): Uint8Array {
    const regs = new Uint8Array(this.regs.values.buffer.slice(0));
    const out = new Uint8Array(regs.length + BAR2_SIZE);
    out.set(regs);
    out.set(this.pci.barMemory(2), regs.length);
    return out;
  }

  private load(state: Uint8Array): void {
    if (state.length !== this.regs.values.byteLength + BAR2_SIZE)
      throw new SampleStateError(state.length, this.regs.values.byteLength + BAR2_SIZE);
    new Uint8Array(this.regs.values.buffer).set(state.subarray(0, this.regs.values.byteLength));
    this.pci.barMemory(2).set(state.subarray(this.regs.values.byteLength));
  }

  close(): void {
    closeFd(this.memfd);
  }
}

/** The sample's checksum: sum of byte * (index + 1), modulo 2^32. */
export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) sum = (sum + bytes[i]! * (i + 1)) >>> 0;
  return sum;
}
