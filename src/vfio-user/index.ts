/** src/vfio-user — the vfio-user protocol: codecs, framing, Server and Client. */
export * from "./constants.js";
export { Errno, ProtocolError, UsageError, VfioUserError } from "./errors.js";
export { type Capabilities, parseCapabilities, serializeCapabilities } from "./capabilities.js";
export * from "./messages.js";
export { Connection, Message, type ConnectionOptions } from "./connection.js";
export type {
  DeviceSession,
  DmaDone,
  DmaPiece,
  FeatureResult,
  RegionDescription,
  VfioDevice,
} from "./device.js";
export { Endpoint, Server, ServerStats, type ServerOptions } from "./server.js";
export { Client, type ClientMemory, type ClientOptions, type RegionInfoWithFd } from "./client.js";
export { type Logger, defaultLogger } from "../base/index.js";
