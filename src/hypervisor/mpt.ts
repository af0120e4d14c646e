/**
 * The mediated pass-through (MPT) interface: everything the mediator needs from
 * the hypervisor, and nothing more — reach guest memory, inject an interrupt.
 * One backend so far, vfio-user: a real VMM such as QEMU, and the project's own
 * simulated VMs (`src/vmm/`), which are vfio-user clients too. Their two memory
 * models (guest RAM shared by fd, or frames reached only by DMA messages) are
 * both handled by that backend. The caller of the mediator picks the backend.
 */
import type { PciDevice } from "../pci/index.js";

export interface Mpt {
  /** A direct view of one 4 KiB guest page (gpa page-aligned), or undefined if it cannot be mapped. */
  mapGuestPage(gpa: bigint): Uint8Array | undefined;
  readGuest(gpa: bigint, out: Uint8Array): void;
  writeGuest(gpa: bigint, data: Uint8Array): void;
  /** Raises the vGPU's interrupt (MSI vector, or INTx) in the guest. */
  injectInterrupt(vector: number): void;
  /**
   * Ends the explicit mappings made since the last call (write-back and unmap),
   * for backends where every guest frame must be mapped before it is touched.
   */
  release?(): void;
}

/** What a backend may ask of the mediator. */
export interface MptHooks {
  /**
   * Drop every cached view of guest pages: the backend is about to unmap pages
   * it handed out with mapGuestPage (it calls this only between workloads).
   */
  forgetGuestPages(): void;
}

/** Makes the MPT for one vGPU's PCI function. */
export type MptFactory = (device: PciDevice, hooks: MptHooks) => Mpt;
