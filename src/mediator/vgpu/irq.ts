/**
 * A vGPU's virtual interrupts, IIR/IMR/IER-style like the parent's: every
 * event sets its bit in ISR; events IMR does not mask latch into IIR (the
 * guest clears them by writing 1); a latched event that IER enables is
 * injected on the vGPU's MSI.
 */
import { Bar2 } from "../../abi/index.js";
import { RegisterFile } from "../../pci/index.js";
import type { VgpuStats } from "./stats.js";

export class VirtualIrq {
  /** ISR/IMR/IIR/IER, relative to `Bar2Block.IRQ`. */
  readonly registers: RegisterFile;

  constructor(
    size: number,
    private readonly stats: VgpuStats,
    /** Delivers one interrupt to the guest. */
    private readonly inject: () => void,
    onUnknown: (offset: number, write: boolean) => void,
  ) {
    this.registers = new RegisterFile(
      size,
      [
        { offset: Bar2.ISR - Bar2.ISR, name: "ISR", writable: 0 },
        { offset: Bar2.IMR - Bar2.ISR, name: "IMR", reset: 0xffffffff },
        { offset: Bar2.IIR - Bar2.ISR, name: "IIR", writable: 0, w1c: 0xffffffff },
        { offset: Bar2.IER - Bar2.ISR, name: "IER" },
      ],
      (offset, write) => onUnknown(offset + Bar2.ISR, write),
    );
  }

  /** A virtual interrupt: latch unless masked, inject if enabled. */
  raise(bits: number): void {
    const r = this.registers;
    r.set("ISR", r.get("ISR") | bits);
    const latched = bits & ~r.get("IMR");
    if (!latched) return;
    r.set("IIR", r.get("IIR") | latched);
    if (latched & r.get("IER")) {
      this.stats.interrupts++;
      this.inject();
    }
  }

  reset(): void {
    this.registers.reset();
  }
}
