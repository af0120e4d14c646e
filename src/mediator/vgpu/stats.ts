/** What a vGPU counts (shown by the manager, asserted by tests). */
export interface VgpuStats {
  traps: number;
  gttUpdates: number;
  gttRejected: number;
  submissions: number;
  commands: number;
  rejected: number;
  hangs: number;
  interrupts: number;
  busyMs: number;
  scanBytes: number;
  /** Tail moves that found the queue full (QUEUE_FULL): merged into the last waiting submission. */
  backpressure: number;
  /** Guest memory served by messages: staging batches sent, and the time work waited for them (ms). */
  dmaBatches: number;
  dmaWaitMs: number;
  /** Work failed because guest memory could not be staged or written back (DMA_ERROR). */
  dmaErrors: number;
}

export function newVgpuStats(): VgpuStats {
  return {
    traps: 0,
    gttUpdates: 0,
    gttRejected: 0,
    submissions: 0,
    commands: 0,
    rejected: 0,
    hangs: 0,
    interrupts: 0,
    busyMs: 0,
    scanBytes: 0,
    backpressure: 0,
    dmaBatches: 0,
    dmaWaitMs: 0,
    dmaErrors: 0,
  };
}
