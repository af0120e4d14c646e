/**
 * A PciBus for a guest driver that reaches its device through the project's
 * vfio-user client — a minimal VMM: config and MMIO become REGION_READ/WRITE,
 * BARs with mmap areas are mapped straight in, MSI arrives on an eventfd.
 */
import { EventFd, Mapping, POLLIN, Poller, closeFd } from "../sys/index.js";
import { RegionBus } from "../guest/bus.js";
import { type Client, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD, PciIrq } from "../vfio-user/index.js";

export class ClientBus extends RegionBus {
  private readonly msi = new EventFd(undefined, { nonBlocking: true });
  private readonly maps = new Map<number, Mapping | undefined>();
  private readonly poller = new Poller(2);

  constructor(readonly client: Client) {
    super();
    client.setIrqs(
      { flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, index: PciIrq.MSI, start: 0, count: 1 },
      [this.msi.fd],
    );
  }

  protected readRegion(region: number, offset: number, out: Uint8Array): void {
    this.client.regionRead(region, offset, out);
  }

  protected writeRegion(region: number, offset: number, data: Uint8Array): void {
    this.client.regionWrite(region, offset, data);
  }

  barMemory(bar: number): Uint8Array | undefined {
    if (!this.maps.has(bar)) {
      const info = this.client.getRegionInfo(bar);
      let mapping: Mapping | undefined;
      if (info.fd !== undefined) {
        const area = info.sparseMmap?.[0] ?? { offset: 0, size: info.size };
        if (area.offset === 0 && area.size === info.size)
          mapping = Mapping.ofFd(info.fd, info.size, { offset: info.offset });
        closeFd(info.fd);
      }
      this.maps.set(bar, mapping);
    }
    return this.maps.get(bar)?.bytes;
  }

  /** Waits on the MSI eventfd, answering the device's own requests (DMA) meanwhile. */
  waitInterrupt(timeoutMs: number): boolean {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.msi.read() > 0) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      // A request may already sit in the client's buffer (read with the reply to our last
      // access): poll would not see it, and the device would wait on us while we wait on it.
      if (this.client.serviceRequests() > 0) continue;
      this.poller.setAll([this.msi.fd, this.client.serviceFd], POLLIN);
      if (this.poller.wait(Math.min(left, 0x7fffffff)) === 0) continue;
      if (this.poller.revents(1)) this.client.serviceRequests();
    }
  }

  close(): void {
    for (const m of this.maps.values()) m?.unmap();
    this.maps.clear();
    this.msi.close();
    this.poller.close();
  }
}
