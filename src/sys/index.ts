/** src/sys — the project's only door to libc (through koffi). */
export { SysError, errnoName, errnoValue } from "./errors.js";
export { closeFd, dupFd, fdSize, fileIdentity, isOpenFd, setNonBlocking, tryLockExclusive } from "./fd.js";
export { EventFd } from "./eventfd.js";
export { type MemfdOptions, SIZE_SEALS, createMemfd, memfdSeals, truncateFd } from "./memfd.js";
export { ComposedMapping, Mapping, type MapOptions } from "./mmap.js";
export { POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, Poller, pollOne } from "./poll.js";
export {
  DatagramSocket,
  SocketChannel,
  type ChannelOptions,
  acceptUnix,
  connectUnix,
  listenUnix,
  peerCredentials,
  type PeerCredentials,
  sendDatagram,
  setReceiveTimeout,
  setSendTimeout,
  shutdownSocket,
  socketPair,
} from "./socket.js";
