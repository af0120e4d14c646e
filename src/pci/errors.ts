import { MgpuError } from "../base/index.js";

/** A device declaration the toolkit cannot build (bad BAR, capability, register or sub-range layout). */
export class PciDeclarationError extends MgpuError {
  declare readonly code: "EDECLARATION";
  constructor(message: string) {
    super("EDECLARATION", message);
  }
}
