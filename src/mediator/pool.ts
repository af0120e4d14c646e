/** A first-fit allocator of aligned ranges (local memory slices, graphics-memory partitions). */
export class RangePool {
  private readonly used: { start: number; size: number }[] = [];

  constructor(
    readonly start: number,
    readonly end: number,
  ) {}

  /** Allocates `size` bytes aligned to `align`; undefined if it does not fit. */
  alloc(size: number, align: number): number | undefined {
    let candidate = Math.ceil(this.start / align) * align;
    const sorted = [...this.used].sort((a, b) => a.start - b.start);
    for (const u of sorted) {
      if (candidate + size <= u.start) break;
      candidate = Math.max(candidate, Math.ceil((u.start + u.size) / align) * align);
    }
    if (candidate + size > this.end) return undefined;
    this.used.push({ start: candidate, size });
    return candidate;
  }

  free(start: number): void {
    const i = this.used.findIndex((u) => u.start === start);
    if (i >= 0) this.used.splice(i, 1);
  }

  /** How many more allocations of `size` (aligned to itself) fit, without allocating. */
  capacity(size: number, align: number): number {
    const taken: { start: number; size: number }[] = [];
    let n = 0;
    for (;;) {
      const at = this.alloc(size, align);
      if (at === undefined) break;
      taken.push({ start: at, size });
      n++;
    }
    for (const t of taken) this.free(t.start);
    return n;
  }
}
