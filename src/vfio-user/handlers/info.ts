/** DEVICE_GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS, GET_IRQ_INFO and SET_IRQS: what the device is and how it is wired. */
import { closeFd } from "../../sys/index.js";
import type { Message } from "../connection.js";
import type { RegionDescription } from "../device.js";
import { REGION_INFO_FLAG_MMAP } from "../constants.js";
import { Errno, VfioUserError, invalid } from "../errors.js";
import {
  DEVICE_INFO_SIZE,
  decodeDeviceInfoRequest,
  decodeIoFdsRequest,
  decodeIrqInfoRequest,
  decodeRegionInfoRequest,
  decodeSetIrqs,
  encodeDeviceInfo,
  encodeIoFds,
  encodeIrqInfo,
  encodeRegionInfo,
  regionInfoFullSize,
} from "../messages.js";
import type { Session } from "../session.js";
import { noFds } from "./common.js";

export function handleDeviceGetInfo(s: Session, m: Message): number {
  noFds(m);
  decodeDeviceInfoRequest(m.reader());
  const w = s.conn.payloadWriter();
  encodeDeviceInfo(w, DEVICE_INFO_SIZE, s.device.deviceInfo());
  return w.length;
}

export function handleRegionInfo(s: Session, m: Message): number {
  noFds(m);
  const { argsz, index } = decodeRegionInfoRequest(m.reader());
  const described = s.device.regionInfo(index);
  // An observer may not map anything: it sees the region as trapped only, and gets no fd.
  const info: RegionDescription =
    s.role === "observer"
      ? {
          index: described.index,
          flags: described.flags & ~REGION_INFO_FLAG_MMAP,
          size: described.size,
          offset: described.offset,
          ...(described.type ? { type: described.type } : {}),
        }
      : described;
  const w = s.conn.payloadWriter();
  encodeRegionInfo(w, argsz, info);
  // The fd goes with a reply that is complete (caps included), as QEMU expects.
  if (info.flags & REGION_INFO_FLAG_MMAP && info.fd !== undefined && argsz >= regionInfoFullSize(info))
    s.replyFds.push(info.fd);
  return w.length;
}

export function handleRegionIoFds(s: Session, m: Message): number {
  noFds(m);
  const { argsz, index } = decodeIoFdsRequest(m.reader());
  if (!s.device.regionIoFds) throw invalid("device offers no I/O fds");
  const { subRegions, fds } = s.device.regionIoFds(index);
  if (fds.length > s.peer.maxMsgFds)
    throw new VfioUserError(Errno.E2BIG, "more I/O fds than the client takes");
  const w = s.conn.payloadWriter();
  encodeIoFds(w, argsz, index, subRegions);
  if (argsz >= w.length) s.replyFds.push(...fds);
  return w.length;
}

export function handleIrqInfo(s: Session, m: Message): number {
  noFds(m);
  const { index } = decodeIrqInfoRequest(m.reader());
  const w = s.conn.payloadWriter();
  encodeIrqInfo(w, s.device.irqInfo(index));
  return w.length;
}

export function handleSetIrqs(s: Session, m: Message): number {
  const req = decodeSetIrqs(m.reader(), m.fds.length);
  const fds = m.fds.splice(0);
  try {
    s.device.setIrqs(req, fds);
  } catch (e) {
    for (const fd of fds) closeFd(fd);
    throw e;
  }
  return 0;
}
