/** DMA_MAP / DMA_UNMAP: the client's memory windows, handed to the device. */
import { closeFd } from "../../sys/index.js";
import type { Message } from "../connection.js";
import { DMA_UNMAP_FLAG_GET_DIRTY_BITMAP } from "../constants.js";
import { Errno, VfioUserError, invalid } from "../errors.js";
import { decodeDmaMap, decodeDmaUnmap, encodeDmaUnmap } from "../messages.js";
import type { Session } from "../session.js";
import { noFds } from "./common.js";

export function handleDmaMap(s: Session, m: Message): number {
  const req = decodeDmaMap(m.reader());
  if (m.fds.length > 1) throw invalid("DMA_MAP carries at most one fd");
  const fd = m.fds.pop();
  try {
    s.device.dmaMap(req, fd);
  } catch (e) {
    if (fd !== undefined) closeFd(fd);
    throw e;
  }
  return 0;
}

export function handleDmaUnmap(s: Session, m: Message): number {
  noFds(m);
  const req = decodeDmaUnmap(m.reader(), s.limits.maxDataXferSize);
  const bitmap = s.device.dmaUnmap(req);
  const w = s.conn.payloadWriter();
  encodeDmaUnmap(w, req);
  if (req.flags & DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) {
    if (!bitmap || bitmap.length !== req.bitmap!.size)
      throw new VfioUserError(Errno.EINVAL, "no dirty bitmap");
    w.bytes(bitmap);
  }
  return w.length;
}
