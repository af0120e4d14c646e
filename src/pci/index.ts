/** src/pci — the PCI device toolkit: a device as declarations and handlers, served over vfio-user. */
export {
  ConfigSpace,
  Cfg,
  Command,
  Status,
  PCI_CONFIG_SIZE,
  PCIE_CONFIG_SIZE,
  type WriteHook,
} from "./config-space.js";
export { type BarDeclaration, type BarKind, type Identity, barAddress } from "./header.js";
export {
  CapId,
  MsiCapability,
  MsixCapability,
  type MsixDeclaration,
  PcieCapability,
  PowerManagement,
} from "./capabilities.js";
export { Interrupts } from "./interrupts.js";
export { DmaError, DmaSpace, DmaView, DMA_PAGE_SIZE } from "./dma.js";
export { Migration, type MigrationHooks, type MigrationSupport, migStateName } from "./migration.js";
export { RegisterFile, type RegisterSpec } from "./registers.js";
export { SubRangeMap, type SubRange, reservedRange, valueRegisters } from "./subranges.js";
export { PciDeclarationError } from "./errors.js";
export {
  PciDevice,
  type BarSpec,
  type PciDeviceOptions,
  type RegionHandler,
  type ResetKind,
} from "./pci-device.js";
export { describeConfig, className, type ConfigDescription } from "./describe.js";
