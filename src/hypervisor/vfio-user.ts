/**
 * The vfio-user MPT backend: guest memory is what the VMM mapped with DMA_MAP;
 * interrupts are the eventfds it wired with SET_IRQS.
 *
 * Two memory models, one mediator: when the VMM shared guest RAM by fd (KVM
 * style) a frame is a direct view of the mapping; when it did not (Xen style:
 * the device model has no standing mapping) each frame is mapped explicitly
 * before it is touched — fetched with DMA_READ into a page of ours — and
 * unmapped on `release()`, which writes it back with DMA_WRITE, the way a Xen
 * device model maps and unmaps foreign frames around each use.
 */
import type { PciDevice } from "../pci/index.js";
import type { Mpt, MptHooks } from "./mpt.js";

export class VfioUserMpt implements Mpt {
  /** Frames mapped explicitly (no fd): gpa → our copy, until release(). */
  private readonly explicit = new Map<bigint, Uint8Array>();
  /** Explicit frame maps and unmaps so far (for tests and stats). */
  maps = 0;

  constructor(
    private readonly device: PciDevice,
    hooks?: MptHooks,
  ) {
    // Pages of windows the VMM unmapped stay revoked (zeros) until the end of a
    // workload; then the mediator drops its cached views and they are unmapped.
    device.dma.beforeReleaseStale = () => hooks?.forgetGuestPages();
  }

  mapGuestPage(gpa: bigint): Uint8Array | undefined {
    const cached = this.explicit.get(gpa);
    if (cached) return cached;
    try {
      return this.device.dma.view(gpa, 4096, true).bytes;
    } catch {
      // No direct view: map this one frame explicitly, if the VMM made it available at all.
      try {
        const page = new Uint8Array(4096);
        this.device.dma.read(gpa, page);
        this.explicit.set(gpa, page);
        this.maps++;
        return page;
      } catch {
        return undefined; // not mapped or DMA not allowed: the GTT faults
      }
    }
  }

  release(): void {
    for (const [gpa, page] of this.explicit) {
      try {
        this.device.dma.write(gpa, page);
      } catch {
        // The VMM unmapped it meanwhile: the frame is gone, nothing to write back.
      }
    }
    this.explicit.clear();
    // A workload just ended: no view of a guest page is in use.
    this.device.dma.releaseStale();
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
