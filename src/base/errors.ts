/**
 * The one base class for this project's errors. Every layer's errors extend it
 * and carry a stable `code` (an errno name such as "EINVAL", or a layer's own
 * upper-case name such as "ENOTYPE"), so callers branch on `code`, never on a
 * message, and a CLI or API can report the same code the layer raised. A
 * layer names its codes as the type parameter: `class E extends MgpuError<"EA" | "EB"> {}`.
 */
export class MgpuError<Code extends string = string> extends Error {
  constructor(
    readonly code: Code,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** True when `e` is one of ours with the given code. */
export function hasCode(e: unknown, code: string): e is MgpuError {
  return e instanceof MgpuError && e.code === code;
}
