/**
 * The command table (which named handler serves each command) and the one
 * place a request becomes a reply: checks common to every command, the
 * handler, then the reply or the error reply.
 */
import { SysError, closeFd } from "../sys/index.js";
import type { Message } from "./connection.js";
import {
  Command,
  FLAG_ERROR,
  FLAG_TYPE_COMMAND,
  FLAG_TYPE_MASK,
  FLAG_TYPE_REPLY,
  PciRegion,
  commandName,
} from "./constants.js";
import { Errno, ProtocolError, VfioUserError, invalid } from "./errors.js";
import type { Handler } from "./handlers/common.js";
import { handleDeviceFeature, handleDeviceReset } from "./handlers/control.js";
import { handleDmaMap, handleDmaUnmap } from "./handlers/dma.js";
import {
  handleDeviceGetInfo,
  handleIrqInfo,
  handleRegionInfo,
  handleRegionIoFds,
  handleSetIrqs,
} from "./handlers/info.js";
import { handleMigDataRead, handleMigDataWrite } from "./handlers/migration.js";
import { handleVersion } from "./handlers/negotiation.js";
import { handleRegionRead, handleRegionWrite, handleRegionWriteMulti } from "./handlers/regions.js";
import type { Session } from "./session.js";

/** Handlers by command number. DMA_READ / DMA_WRITE flow server → client: from a client they are invalid. */
const handlers: (Handler | undefined)[] = [];
handlers[Command.VERSION] = handleVersion;
handlers[Command.DMA_MAP] = handleDmaMap;
handlers[Command.DMA_UNMAP] = handleDmaUnmap;
handlers[Command.DEVICE_GET_INFO] = handleDeviceGetInfo;
handlers[Command.DEVICE_GET_REGION_INFO] = handleRegionInfo;
handlers[Command.DEVICE_GET_REGION_IO_FDS] = handleRegionIoFds;
handlers[Command.DEVICE_GET_IRQ_INFO] = handleIrqInfo;
handlers[Command.DEVICE_SET_IRQS] = handleSetIrqs;
handlers[Command.REGION_READ] = handleRegionRead;
handlers[Command.REGION_WRITE] = handleRegionWrite;
handlers[Command.REGION_WRITE_MULTI] = handleRegionWriteMulti;
handlers[Command.DEVICE_RESET] = handleDeviceReset;
handlers[Command.DEVICE_FEATURE] = handleDeviceFeature;
handlers[Command.MIG_DATA_READ] = handleMigDataRead;
handlers[Command.MIG_DATA_WRITE] = handleMigDataWrite;

/**
 * Handles one message and sends its reply (unless the client asked for none).
 * A failed command gets an errno reply; only errors that mean the stream itself
 * is lost (ProtocolError, a failed send or receive) propagate, to close the session.
 */
export function dispatch(s: Session, m: Message): void {
  const conn = s.conn;
  try {
    // A reply to one of our asynchronous DMA requests.
    if ((m.flags & FLAG_TYPE_MASK) === FLAG_TYPE_REPLY && s.completeReply(m)) return;
    // A reply to nothing we are waiting for, or an unknown type: EINVAL, as libvfio-user.
    if ((m.flags & FLAG_TYPE_MASK) !== FLAG_TYPE_COMMAND)
      throw invalid(
        (m.flags & FLAG_TYPE_MASK) === FLAG_TYPE_REPLY
          ? "a reply to no request of ours"
          : `message type ${m.flags & FLAG_TYPE_MASK}`,
      );
    s.endpoint.stats.commands[m.command & 31]!++;
    if (m.oversized) throw new VfioUserError(Errno.E2BIG, `message of ${m.size} bytes`);
    if (!s.negotiated && m.command !== Command.VERSION)
      throw invalid(`${commandName(m.command)} before VERSION`);
    const handler = handlers[m.command];
    if (!handler) throw invalid(`unsupported command ${commandName(m.command)}`);
    if (s.role === "observer" && !observerMay(m)) {
      s.endpoint.stats.observerRefusals++;
      throw new VfioUserError(
        Errno.EBUSY,
        `${commandName(m.command)}: the device is in use by another client`,
      );
    }
    if (m.fds.length > 0 && (s.device.heldFdCount?.() ?? 0) + m.fds.length > s.limits.maxClientFds)
      throw new VfioUserError(Errno.EMFILE, `the device holds ${s.limits.maxClientFds} fds of this client`);
    s.replyFds.length = 0;
    const length = handler(s, m);
    if (!m.noReply) conn.send(m.id, m.command, FLAG_TYPE_REPLY, 0, length, s.replyFds);
    closeAfterReply(s);
  } catch (e) {
    if (!(e instanceof VfioUserError)) {
      if (e instanceof ProtocolError) throw e;
      if (e instanceof SysError && !isDeviceError(e)) throw e;
    }
    const errno = e instanceof VfioUserError ? e.errno : e instanceof SysError ? e.errno : Errno.EIO;
    s.endpoint.stats.errorReplies++;
    s.endpoint.stats.errorsByErrno[Math.min(errno, 255)]!++;
    s.log.warn(
      { id: m.id, command: commandName(m.command), errno, err: e instanceof Error ? e.message : String(e) },
      "command failed",
    );
    closeAfterReply(s);
    if (!m.noReply) conn.send(m.id, m.command, FLAG_TYPE_REPLY | FLAG_ERROR, errno, 0);
  } finally {
    conn.release(m);
  }
  if (s.failure) throw new ProtocolError(s.failure);
}

/**
 * What a read-only observer (a client that connected while the device had an
 * owner) may do: learn what the device is and read its config space. Anything
 * that changes state — resets, DMA_MAP/UNMAP, SET_IRQS, writes, migration —
 * and BAR reads (a register read may have side effects) get EBUSY.
 */
function observerMay(m: Message): boolean {
  switch (m.command) {
    case Command.DEVICE_GET_INFO:
    case Command.DEVICE_GET_REGION_INFO:
    case Command.DEVICE_GET_IRQ_INFO:
      return true;
    case Command.REGION_READ:
      return m.payloadLength >= 12 && m.view.getUint32(m.payloadOffset + 8, true) === PciRegion.CONFIG;
    default:
      return false;
  }
}

function closeAfterReply(s: Session): void {
  for (const fd of s.closeAfterReply) closeFd(fd);
  s.closeAfterReply.length = 0;
}

/** Errors a device may raise from libc that mean "this request failed", not "the socket failed". */
function isDeviceError(e: SysError): boolean {
  return e.syscall !== "sendmsg" && e.syscall !== "recvmsg";
}
