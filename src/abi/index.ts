/**
 * src/abi — the vGPU's guest-visible interface, defined once: PCI identity,
 * BAR2 register layout, the PV info block, interrupt bits, error and rejection
 * codes, the GTT entry format and the command table with its encoders. The
 * mediator, the parent GPU (where it mirrors this interface) and the guest
 * driver all read it. It imports nothing but the error base class (base/errors.ts).
 */
export * from "./registers.js";
export * from "./device.js";
export * from "./gtt.js";
export * from "./commands.js";
export * from "./blit-ops.js";
