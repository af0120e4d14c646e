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

/**
 * Bounded, reusable small integers (vGPU ids): an id is handed out again only
 * after it was freed, and never exceeds `max`, so it always fits the bits that
 * carry it (the owner tag of a shadowed system GTT entry).
 */
export class IdPool {
  private next: number;
  private readonly freed: number[] = [];
  private readonly used = new Set<number>();

  constructor(
    readonly first: number,
    readonly max: number,
  ) {
    this.next = first;
  }

  /** The lowest freed id, or a new one; undefined when all are in use. */
  alloc(): number | undefined {
    let id: number | undefined;
    if (this.freed.length > 0) {
      // Lowest first keeps ids small and reuse predictable (freed is kept sorted descending).
      id = this.freed.pop()!;
    } else if (this.next <= this.max) id = this.next++;
    if (id !== undefined) this.used.add(id);
    return id;
  }

  free(id: number): void {
    if (!this.used.delete(id)) return;
    let i = this.freed.length;
    while (i > 0 && this.freed[i - 1]! < id) i--;
    this.freed.splice(i, 0, id);
  }

  get inUse(): number {
    return this.used.size;
  }
}
