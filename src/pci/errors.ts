import { MgpuError } from "../base/index.js";

/**
 * A device declaration the toolkit cannot build (bad BAR, capability, register
 * or sub-range layout), or device code asking for what its declaration does
 * not have (a register name, a BAR's memory).
 */
export class PciDeclarationError extends MgpuError<"EDECLARATION"> {
  constructor(message: string) {
    super("EDECLARATION", message);
  }
}
