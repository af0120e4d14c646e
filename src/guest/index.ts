/** src/guest — a driver for the vGPU, written as a guest would, over a small bus interface. */
export { type PciBus, RegionBus } from "./bus.js";
export { GuestDriver, GuestDriverError, type Partition } from "./driver.js";
