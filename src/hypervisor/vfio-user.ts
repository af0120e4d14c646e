/**
 * The vfio-user MPT backend: guest memory is what the VMM mapped with DMA_MAP
 * (mmapped when it passed fds, DMA_READ/DMA_WRITE otherwise); interrupts are
 * the eventfds it wired with SET_IRQS.
 */
import type { PciDevice } from "../pci/index.js";
import type { Mpt } from "./mpt.js";

export class VfioUserMpt implements Mpt {
  constructor(private readonly device: PciDevice) {}

  mapGuestPage(gpa: bigint): Uint8Array | undefined {
    try {
      return this.device.dma.view(gpa, 4096, true).bytes;
    } catch {
      return undefined; // not mapped, not fd-backed, or DMA not allowed: the GTT faults
    }
  }

  readGuest(gpa: bigint, out: Uint8Array): void {
    this.device.dma.read(gpa, out);
  }

  writeGuest(gpa: bigint, data: Uint8Array): void {
    this.device.dma.write(gpa, data);
  }

  injectInterrupt(vector: number): void {
    this.device.irqs.notify(vector);
  }
}
