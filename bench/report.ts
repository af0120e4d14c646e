/** What every benchmark returns: named figures, printed as a table and written as JSON. */
export interface BenchFigure {
  readonly metric: string;
  readonly value: number;
  readonly unit: string;
  /** Free text: what the figure is compared with, or a target. */
  readonly note?: string;
}

export interface BenchReport {
  readonly name: string;
  readonly figures: readonly BenchFigure[];
  /** Extra structured data worth keeping in the JSON (raw samples, settings). */
  readonly details?: Record<string, unknown>;
}

export function formatTable(report: BenchReport): string {
  const rows = report.figures.map((f) => [f.metric, formatValue(f.value), f.unit, f.note ?? ""]);
  const header = ["metric", "value", "unit", "note"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 1 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [`== ${report.name}`, line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join(
    "\n",
  );
}

function formatValue(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(3);
}

/** Percentile of a sorted sample (nearest rank). */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}
