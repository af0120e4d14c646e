/**
 * A fixed ring of recent samples (e.g. durations), recorded on a hot path
 * without allocating and drained in batches by a reader elsewhere (metrics).
 * When nobody drains it, the oldest samples are overwritten and counted.
 */
export class SampleLog {
  private readonly values: Float64Array;
  private start = 0;
  private size = 0;
  /** Samples overwritten before they were drained. */
  dropped = 0;

  constructor(capacity = 16384) {
    this.values = new Float64Array(capacity);
  }

  record(value: number): void {
    const cap = this.values.length;
    if (this.size === cap) {
      this.values[this.start] = value;
      this.start = (this.start + 1) % cap;
      this.dropped++;
      return;
    }
    this.values[(this.start + this.size) % cap] = value;
    this.size++;
  }

  /** Everything recorded since the last drain, oldest first. */
  drain(): number[] {
    const out = new Array<number>(this.size);
    const cap = this.values.length;
    for (let i = 0; i < this.size; i++) out[i] = this.values[(this.start + i) % cap]!;
    this.start = 0;
    this.size = 0;
    return out;
  }
}
