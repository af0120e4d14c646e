/**
 * Prometheus metrics from the daemon's counters. The daemon keeps plain
 * numbers on its hot paths (vGPU stats, vfio-user ServerStats, DmaSpace byte
 * counts, the scheduler's tick log); each snapshot sets the exported values
 * from them, so nothing on the trap path knows about Prometheus.
 *
 * Per vGPU (labels uuid, type): traps by region and direction, GTT updates
 * and refusals, commands scanned, streams rejected, hangs, interrupts, engine
 * time, engine share and weight share, DMA bytes, display mode. Per daemon:
 * connections, message errors by errno, the scheduler's tick length histogram.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { FrameReader } from "./frames.js";
import type { DaemonSnapshot, VgpuSnapshot } from "./protocol.js";

/** vfio-user region indexes of a PCI device, by name. */
const REGIONS = ["bar0", "bar1", "bar2", "bar3", "bar4", "bar5", "rom", "config", "vga"] as const;
const ALWAYS = new Set(["bar0", "bar2", "config"]);

type VgpuLabels = "uuid" | "type";

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly perVgpu: (Counter<string> | Gauge<string>)[] = [];
  private readonly counters: Record<string, Counter<string>> = {};
  private readonly gauges: Record<string, Gauge<string>> = {};
  private readonly ticks: Histogram<string>;
  /** Daemon-wide totals kept as sums of per-vGPU increases, so removing a vGPU never lowers them. */
  private readonly totals = { accepted: 0, closedOnError: 0, errors: new Map<string, number>() };
  private readonly last = new Map<string, VgpuSnapshot>();

  constructor(private readonly frames: FrameReader) {
    const r = this.registry;
    const counter = (name: string, help: string, extra: string[] = []) => {
      const c = new Counter({ name, help, labelNames: ["uuid", "type", ...extra], registers: [r] });
      this.perVgpu.push(c);
      return c;
    };
    const gauge = (name: string, help: string) => {
      const g = new Gauge<VgpuLabels>({ name, help, labelNames: ["uuid", "type"], registers: [r] });
      this.perVgpu.push(g);
      return g;
    };
    Object.assign(this.counters, {
      traps: counter("mgpu_vgpu_traps_total", "Trapped region accesses (vfio-user REGION_READ/WRITE)", [
        "region",
        "op",
      ]),
      gttUpdates: counter("mgpu_vgpu_gtt_updates_total", "Guest GTT entries validated and shadowed"),
      gttRejected: counter("mgpu_vgpu_gtt_rejected_total", "Guest GTT entries refused (outside the vGPU)"),
      submissions: counter("mgpu_vgpu_submissions_total", "Command streams scanned and queued"),
      commands: counter("mgpu_vgpu_commands_scanned_total", "Commands scanned in guest command streams"),
      rejected: counter("mgpu_vgpu_command_streams_rejected_total", "Command streams the scanner refused"),
      hangs: counter("mgpu_vgpu_hangs_total", "Workloads preempted by the watchdog"),
      interrupts: counter("mgpu_vgpu_interrupts_total", "Virtual interrupts injected into the guest"),
      engine: counter("mgpu_vgpu_engine_seconds_total", "Time the shared engine ran this vGPU's work"),
      scanned: counter("mgpu_vgpu_scanned_bytes_total", "Bytes of command stream scanned"),
      dma: counter("mgpu_vgpu_dma_bytes_total", "Bytes moved to or from guest memory by DMA", ["direction"]),
    });
    Object.assign(this.gauges, {
      share: gauge("mgpu_vgpu_engine_share_ratio", "This vGPU's share of all engine time so far"),
      weightShare: gauge(
        "mgpu_vgpu_weight_share_ratio",
        "This vGPU's weight over the running vGPUs' weights",
      ),
      weight: gauge("mgpu_vgpu_weight", "Scheduling weight of the vGPU's type"),
      width: gauge("mgpu_vgpu_display_width_pixels", "Display mode width (0 when off)"),
      height: gauge("mgpu_vgpu_display_height_pixels", "Display mode height (0 when off)"),
      bpp: gauge("mgpu_vgpu_display_bits_per_pixel", "Display mode depth"),
      enabled: gauge("mgpu_vgpu_display_enabled", "1 when the guest has the display on"),
      error: gauge("mgpu_vgpu_engine_error", "The vGPU's engine error register (0: none)"),
    });
    this.counters.connectionsAccepted = new Counter({
      name: "mgpu_connections_accepted_total",
      help: "vfio-user clients accepted",
      registers: [r],
    });
    this.counters.closedOnError = new Counter({
      name: "mgpu_connections_closed_on_error_total",
      help: "vfio-user connections closed on a protocol or fatal error",
      registers: [r],
    });
    this.counters.messageErrors = new Counter({
      name: "mgpu_message_errors_total",
      help: "vfio-user requests answered with an error, by errno",
      labelNames: ["errno"],
      registers: [r],
    });
    this.gauges.connections = new Gauge({
      name: "mgpu_connections",
      help: "vfio-user clients connected now",
      registers: [r],
    });
    this.gauges.vgpus = new Gauge({ name: "mgpu_vgpus", help: "Running vGPUs", registers: [r] });
    this.counters.engineTotal = new Counter({
      name: "mgpu_engine_seconds_total",
      help: "Time the shared engine ran any vGPU's work",
      registers: [r],
    });
    this.ticks = new Histogram({
      name: "mgpu_scheduler_tick_seconds",
      help: "Length of scheduler ticks that ran the engine (traps wait at most this long)",
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1],
      registers: [r],
    });
    collectDefaultMetrics({ register: r });
  }

  /** Sets every exported value from a snapshot, and observes its tick samples. */
  update(s: DaemonSnapshot): void {
    for (const m of this.perVgpu) m.reset();
    const c = this.counters;
    const g = this.gauges;
    const weights = s.vgpus.reduce((n, v) => n + v.weight, 0);
    const seen = new Set<string>();
    for (const v of s.vgpus) {
      seen.add(v.uuid);
      const l = { uuid: v.uuid, type: v.type };
      REGIONS.forEach((region, i) => {
        const reads = v.regionReads[i] ?? 0;
        const writes = v.regionWrites[i] ?? 0;
        if (!ALWAYS.has(region) && reads + writes === 0) return;
        c.traps!.inc({ ...l, region, op: "read" }, reads);
        c.traps!.inc({ ...l, region, op: "write" }, writes);
      });
      c.gttUpdates!.inc(l, v.stats.gttUpdates);
      c.gttRejected!.inc(l, v.stats.gttRejected);
      c.submissions!.inc(l, v.stats.submissions);
      c.commands!.inc(l, v.stats.commands);
      c.rejected!.inc(l, v.stats.rejected);
      c.hangs!.inc(l, v.stats.hangs);
      c.interrupts!.inc(l, v.stats.interrupts);
      c.engine!.inc(l, v.stats.busyMs / 1000);
      c.scanned!.inc(l, v.stats.scanBytes);
      c.dma!.inc({ ...l, direction: "read" }, v.dmaBytesRead);
      c.dma!.inc({ ...l, direction: "write" }, v.dmaBytesWritten);
      g.share!.set(l, s.totalBusyMs > 0 ? v.stats.busyMs / s.totalBusyMs : 0);
      g.weightShare!.set(l, weights > 0 ? v.weight / weights : 0);
      g.weight!.set(l, v.weight);
      const mode = this.frames.mode(v.display);
      g.width!.set(l, mode.width);
      g.height!.set(l, mode.height);
      g.bpp!.set(l, mode.bpp);
      g.enabled!.set(l, mode.enabled ? 1 : 0);
      g.error!.set(l, v.error);
      this.accumulate(v);
    }
    for (const uuid of this.last.keys()) if (!seen.has(uuid)) this.last.delete(uuid);
    c.connectionsAccepted!.reset();
    c.connectionsAccepted!.inc(this.totals.accepted);
    c.closedOnError!.reset();
    c.closedOnError!.inc(this.totals.closedOnError);
    c.messageErrors!.reset();
    for (const [errno, n] of this.totals.errors) c.messageErrors!.inc({ errno }, n);
    c.engineTotal!.reset();
    c.engineTotal!.inc(s.totalBusyMs / 1000);
    g.connections!.set(s.connections);
    g.vgpus!.set(s.vgpus.length);
    for (const t of s.tickSeconds) this.ticks.observe(t);
  }

  private accumulate(v: VgpuSnapshot): void {
    const before = this.last.get(v.uuid);
    const t = this.totals;
    t.accepted += v.connectionsAccepted - (before?.connectionsAccepted ?? 0);
    t.closedOnError += v.connectionsClosedOnError - (before?.connectionsClosedOnError ?? 0);
    for (const [errno, n] of Object.entries(v.errors))
      t.errors.set(errno, (t.errors.get(errno) ?? 0) + n - (before?.errors[errno] ?? 0));
    this.last.set(v.uuid, v);
  }
}
