/**
 * IIR/IMR/IER-style interrupts: every event sets its bit in ISR (raw status);
 * events not masked by IMR latch into IIR (software clears by writing 1);
 * the line is up while IIR & IER is non-zero, and each new latched, enabled
 * event calls the owner's callback (which the owner connects to MSI).
 */
export class InterruptController {
  isr = 0;
  imr = 0xffffffff;
  iir = 0;
  ier = 0;
  /** Called for every latched, enabled event. */
  onInterrupt: ((bits: number) => void) | undefined;
  readonly counts = new Float64Array(32);

  raise(bits: number): void {
    this.isr |= bits;
    const latched = bits & ~this.imr;
    if (latched === 0) return;
    this.iir |= latched;
    for (let b = 0; b < 32; b++) if (latched & (1 << b)) this.counts[b]!++;
    if (latched & this.ier) this.onInterrupt?.(latched & this.ier);
  }

  /** Write-1-to-clear on IIR; an event still pending and enabled re-fires. */
  clear(bits: number): void {
    this.iir &= ~bits;
    this.isr &= ~bits;
  }

  get asserted(): boolean {
    return (this.iir & this.ier) !== 0;
  }

  reset(): void {
    this.isr = 0;
    this.imr = 0xffffffff;
    this.iir = 0;
    this.ier = 0;
  }
}
