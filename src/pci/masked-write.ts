/**
 * The one rule for a guest write to a register with access masks (PCI config
 * space, BAR register tables): only `writable` bits take the written value,
 * and bits in `w1c` that are written as 1 clear. Everything else keeps its value.
 */
export function maskedWrite(previous: number, incoming: number, writable: number, w1c: number): number {
  return (((previous & ~writable) | (incoming & writable)) & ~(w1c & incoming)) >>> 0;
}
