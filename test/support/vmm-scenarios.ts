/**
 * Hostile or slow VMM behaviours against the toolkit's sample device, shared
 * by the isolation tests and `npm run bench -- protocol-isolation`.
 */
import { readFileSync } from "node:fs";
import { closeFd, createMemfd } from "../../src/sys/index.js";
import { type Client, Command, FLAG_TYPE_REPLY, PciRegion } from "../../src/vfio-user/index.js";
import { Reg } from "../../src/samples/sample-device.js";
import { RawPeer, header, le, message } from "./raw-peer.js";

/** A field of /proc/<pid>/status in KiB (VmSize, VmRSS). */
export function statusKiB(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new RangeError(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

export const DMA_WINDOW = { address: 0x100000, size: 0x8000 };

/**
 * A VMM whose guest memory has no fd (the device reaches it only by DMA
 * messages): it maps 8 pages, turns on decoding and bus mastering and rings the
 * sample's doorbell with `op` (2: synchronous checksum, 4: asynchronous), then
 * keeps the server's DMA requests in `requests` without answering them.
 */
export function vmmSittingOnDma(path: string, op: 2 | 4): RawPeer {
  const vmm = new RawPeer(path);
  vmm.handshake();
  vmm.holdRequests = true;
  const { address, size } = DMA_WINDOW;
  vmm.request(2, Command.DMA_MAP, le([32, 32], [32, 3], [64, 0], [64, address], [64, size]));
  vmm.request(
    3,
    Command.REGION_WRITE,
    Buffer.concat([le([64, 4], [32, PciRegion.CONFIG], [32, 2]), le([16, 6])]),
  );
  const reg = (id: number, offset: number, value: number) =>
    vmm.send(
      message(
        id,
        Command.REGION_WRITE,
        0,
        Buffer.concat([le([64, offset], [32, PciRegion.BAR0], [32, 4]), le([32, value])]),
      ),
    );
  reg(4, Reg.DMA_LO, address);
  reg(5, Reg.DMA_HI, 0);
  reg(6, Reg.DMA_LEN, size);
  reg(7, Reg.DOORBELL, op);
  if (op === 4) vmm.readUntil(7); // the doorbell write is answered at once
  return vmm;
}

/** Waits for the held DMA requests and answers each DMA_READ with `fill(offset)` bytes. */
export function answerHeldDma(vmm: RawPeer, fill: (offset: number) => number = () => 0): void {
  while (vmm.requests.length === 0 && !vmm.closedByServer) vmm.readUntil(-1, { orRequest: true });
  for (const req of vmm.requests.splice(0)) {
    const address = Number(req.payload.readBigUInt64LE(0));
    const count = Number(req.payload.readBigUInt64LE(8));
    const data = Buffer.alloc(count);
    for (let i = 0; i < count; i++) data[i] = fill(address - DMA_WINDOW.address + i);
    const body = Buffer.concat([req.payload.subarray(0, 16), data]);
    vmm.send(Buffer.concat([header(req.id, req.command, FLAG_TYPE_REPLY, 0, body.length), body]));
  }
}

/** A client that turns on decoding, pipelines 8 x 1 MiB REGION_READs of BAR2 and never reads the replies. */
export function clientThatStopsReading(path: string): RawPeer {
  const hog = new RawPeer(path);
  hog.handshake();
  hog.request(
    2,
    Command.REGION_WRITE,
    Buffer.concat([le([64, 4], [32, PciRegion.CONFIG], [32, 2]), le([16, 2])]),
  );
  for (let i = 0; i < 8; i++)
    hog.send(message(10 + i, Command.REGION_READ, 0, le([64, 0], [32, PciRegion.BAR2], [32, 1 << 20])));
  return hog;
}

/** `n` DMA_MAP/DMA_UNMAP cycles of a 4 GiB window (sparse memfd); returns how long they took (ms). */
export function mapUnmapCycles(c: Client, n: number): number {
  const memfd = createMemfd("cycled", 4 * 2 ** 30);
  const req = { flags: 3, offset: 0n, address: 0x2_0000_0000n, size: 4n << 30n };
  try {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      c.dmaMap(req, memfd);
      c.dmaUnmap(req.address, req.size);
    }
    return performance.now() - t0;
  } finally {
    closeFd(memfd);
  }
}
