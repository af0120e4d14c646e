/**
 * What a client may name, checked before it reaches a path, a file or the
 * mediator: vGPU UUIDs (lower-case RFC 4122 form: they become file names),
 * type names the parent offers, and names for people. The control channel's
 * requests are checked against JSON schemas with ajv, the same validator the
 * definitions use.
 */
import { Ajv, type ValidateFunction } from "ajv";
import { defaultTypes } from "../mediator/types.js";
import { ManagerError } from "./errors.js";

/**
 * Lower case only: a UUID names a file and a socket, and two spellings of one
 * UUID must not name two files (the `uuid` package's validate accepts both cases).
 */
export const UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const uuidRe = new RegExp(UUID_PATTERN);

/** Printable, no control characters, up to 128 characters. */
export const NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f]{1,128}$";

export const typeNames: readonly string[] = defaultTypes.map((t) => t.name);

export function isUuid(value: unknown): value is string {
  return typeof value === "string" && uuidRe.test(value);
}

export function checkUuid(value: unknown, what = "vGPU UUID"): string {
  if (!isUuid(value))
    throw new ManagerError(
      "EINVAL",
      `${what} must be a lower-case UUID like 8c1e0f4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b, not ${JSON.stringify(value)}`,
    );
  return value;
}

/** An unknown type is ENOTYPE, the mediator's own code for it (the CLI exits 2). */
export function checkType(value: unknown): string {
  if (typeof value !== "string" || !typeNames.includes(value))
    throw new ManagerError(
      "ENOTYPE",
      `no vGPU type ${typeof value === "string" ? value : JSON.stringify(value)} (known: ${typeNames.join(", ")})`,
    );
  return value;
}

/** `TYPE[:UUID]` as given to `serve --vgpu`. */
export function parseVgpuSpec(spec: string): { type: string; uuid?: string } {
  const colon = spec.indexOf(":");
  const type = checkType(colon < 0 ? spec : spec.slice(0, colon));
  if (colon < 0) return { type };
  return { type, uuid: checkUuid(spec.slice(colon + 1), `--vgpu ${spec}: the UUID`) };
}

const uuid = { type: "string", pattern: UUID_PATTERN } as const;
// Checked by checkType when used, so an unknown one gets ENOTYPE with the list of known ones.
const type = { type: "string", minLength: 1, maxLength: 64 } as const;
const noArgs = { type: "object", required: ["cmd"], additionalProperties: false, properties: { cmd: {} } };
const byUuid = (extra: Record<string, unknown> = {}) => ({
  type: "object",
  required: ["cmd", "uuid"],
  additionalProperties: false,
  properties: { cmd: {}, uuid, ...extra },
});

/** The control channel's requests, one schema per command. */
const requestSchemas: Record<string, object> = {
  types: noArgs,
  list: noArgs,
  stats: noArgs,
  quit: noArgs,
  create: {
    type: "object",
    required: ["cmd", "type"],
    additionalProperties: false,
    properties: { cmd: {}, type, uuid },
  },
  start: byUuid(),
  remove: byUuid({ force: { type: "boolean" } }),
  stop: byUuid({ force: { type: "boolean" } }),
  "qemu-args": byUuid(),
  screenshot: byUuid(),
  checksum: byUuid(),
};

const ajv = new Ajv({ allErrors: true });
const validators = new Map<string, ValidateFunction>(
  Object.entries(requestSchemas).map(([cmd, schema]) => [cmd, ajv.compile(schema)]),
);

export const commands: readonly string[] = [...validators.keys()];

/** Checks a control request against its command's schema; throws EINVAL naming every problem. */
export function checkRequest(request: { readonly cmd: string }): void {
  const cmd = request.cmd;
  const validate = validators.get(cmd);
  if (!validate)
    throw new ManagerError(
      "EINVAL",
      `unknown command ${JSON.stringify(cmd)} (known: ${commands.join(", ")})`,
    );
  if (validate(request)) return;
  const problems = (validate.errors ?? [])
    .map((e) =>
      e.keyword === "additionalProperties"
        ? `unexpected field ${String((e.params as { additionalProperty?: string }).additionalProperty)}`
        : `${e.instancePath.slice(1) || "request"} ${e.message ?? "is invalid"}`,
    )
    .join("; ");
  throw new ManagerError("EINVAL", `${cmd}: ${problems}`);
}
