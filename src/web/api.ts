/**
 * The HTTP API: the CLI's operations as REST resources, with JSON schemas for
 * every request and response. Errors carry the CLI's codes ({error, code}) and
 * an HTTP status that fits them.
 *
 *   GET    /api/v1/types                       types and how many more fit
 *   GET    /api/v1/vgpus                       running vGPUs with their stats
 *   POST   /api/v1/vgpus {type, uuid?}         create (not persistent)
 *   GET    /api/v1/vgpus/:uuid                 one running vGPU
 *   DELETE /api/v1/vgpus/:uuid                 remove
 *   POST   /api/v1/vgpus/:uuid/stop            stop (its definition stays)
 *   GET    /api/v1/vgpus/:uuid/stats           counters, share, display mode
 *   GET    /api/v1/vgpus/:uuid/qemu-args       the QEMU options that attach it
 *   GET    /api/v1/vgpus/:uuid/screenshot.png  its display as PNG
 *   GET    /api/v1/definitions                 persistent definitions (and broken files)
 *   POST   /api/v1/definitions {type, uuid?, name?, autostart?}
 *   PATCH  /api/v1/definitions/:uuid {type?, name?, autostart?}
 *   DELETE /api/v1/definitions/:uuid           undefine
 *   POST   /api/v1/definitions/:uuid/start     start a defined vGPU
 */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import type { Logger } from "../base/index.js";
import type { Definition } from "../manager/definitions.js";
import type { FrameReader } from "./frames.js";
import { ApiError, type DaemonLink } from "./link.js";

const UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const TYPE_NAME = { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9._-]+$" } as const;

/** HTTP status for each code the daemon and the definitions raise. */
const statusOf: Record<string, number> = {
  EINVAL: 400,
  ENOTYPE: 400,
  ENOENT: 404,
  EEXIST: 409,
  ENOSPC: 409,
  ETIMEDOUT: 503,
};

const errorSchema = {
  type: "object",
  required: ["error", "code"],
  properties: { error: { type: "string" }, code: { type: "string" } },
} as const;

const uuidParams = {
  type: "object",
  required: ["uuid"],
  properties: { uuid: { type: "string", pattern: UUID } },
} as const;

const statsSchema = {
  type: "object",
  properties: Object.fromEntries(
    [
      "traps",
      "gttUpdates",
      "gttRejected",
      "submissions",
      "commands",
      "rejected",
      "hangs",
      "interrupts",
      "busyMs",
      "scanBytes",
      "backpressure",
      "dmaBatches",
      "dmaWaitMs",
      "dmaErrors",
    ].map((k) => [k, { type: "number" }]),
  ),
} as const;

const vgpuSchema = {
  type: "object",
  required: ["uuid", "type", "socket", "defined", "share", "stats", "display"],
  properties: {
    uuid: { type: "string" },
    type: { type: "string" },
    socket: { type: "string" },
    defined: { type: "boolean" },
    share: { type: "number" },
    error: { type: "number" },
    explicitFrameMaps: { type: "number" },
    dmaBytesWrittenBack: { type: "number" },
    regionReads: { type: "array", items: { type: "number" } },
    regionWrites: { type: "array", items: { type: "number" } },
    stats: statsSchema,
    display: {
      type: "object",
      properties: { width: { type: "number" }, height: { type: "number" }, enabled: { type: "boolean" } },
    },
    vnc: { type: "string" },
  },
} as const;

/** The named properties of a schema's `properties`, for a reply that carries part of an object. */
function pick<P extends object, K extends keyof P>(properties: P, keys: readonly K[]): Pick<P, K> {
  return Object.fromEntries(keys.map((k) => [k, properties[k]])) as Pick<P, K>;
}

const definitionSchema = {
  type: "object",
  required: ["uuid", "type", "autostart"],
  properties: {
    uuid: { type: "string" },
    type: { type: "string" },
    autostart: { type: "boolean" },
    name: { type: "string" },
  },
} as const;

const socketReply = {
  type: "object",
  required: ["uuid", "socket"],
  properties: { uuid: { type: "string" }, socket: { type: "string" } },
} as const;

const errors = { 400: errorSchema, 404: errorSchema, 409: errorSchema, 500: errorSchema, 503: errorSchema };

export interface ApiContext {
  readonly link: DaemonLink;
  readonly frames: FrameReader;
  readonly log: Logger;
  /** VNC consoles, if they are on: opened for every listed vGPU, and their addresses. */
  readonly vnc?: {
    ensure(vgpus: readonly { uuid: string; type: string }[]): Promise<void>;
    address(uuid: string): string | undefined;
  };
}

interface Running {
  uuid: string;
  type: string;
  vnc?: string;
}

export function registerApi(app: FastifyInstance, ctx: ApiContext): void {
  const { link } = ctx;

  app.setErrorHandler(
    (err: Error & { code?: string; validation?: unknown; statusCode?: number }, req, reply) => {
      if (err instanceof ApiError) {
        void reply.code(statusOf[err.code] ?? 500).send({ error: err.message, code: err.code });
        return;
      }
      if (err.validation || err.statusCode === 400 || err.statusCode === 415) {
        void reply.code(400).send({ error: err.message, code: "EINVAL" });
        return;
      }
      const status = err.statusCode ?? 500;
      if (status >= 500) ctx.log.error({ url: req.url, err: err.message }, "HTTP request failed");
      void reply.code(status).send({ error: err.message, code: status >= 500 ? "EIO" : "EINVAL" });
    },
  );
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: `no route ${req.method} ${req.url}`, code: "ENOENT" });
  });

  const running = async (): Promise<Running[]> => {
    const vgpus = (await link.ok({ op: "handle", request: { cmd: "list" } })).vgpus as Running[];
    await ctx.vnc?.ensure(vgpus);
    return vgpus.map((v) => {
      const vnc = ctx.vnc?.address(v.uuid);
      return vnc ? { ...v, vnc } : v;
    });
  };
  const one = async (uuid: string): Promise<Running> => {
    const v = (await running()).find((x) => x.uuid === uuid);
    if (!v) throw new ApiError("ENOENT", `vGPU ${uuid} is not running`);
    return v;
  };

  app.get(
    "/api/v1/types",
    {
      schema: {
        response: {
          200: {
            type: "array",
            items: {
              type: "object",
              required: ["name", "availableInstances", "weight"],
              properties: {
                name: { type: "string" },
                description: { type: "string" },
                localMemory: { type: "number" },
                graphicsMemory: { type: "number" },
                maxWidth: { type: "number" },
                maxHeight: { type: "number" },
                weight: { type: "number" },
                availableInstances: { type: "number" },
              },
            },
          },
          ...errors,
        },
      },
    },
    async () => (await link.ok({ op: "handle", request: { cmd: "types" } })).types,
  );

  app.get(
    "/api/v1/vgpus",
    { schema: { response: { 200: { type: "array", items: vgpuSchema }, ...errors } } },
    running,
  );

  app.post<{ Body: { type: string; uuid?: string } }>(
    "/api/v1/vgpus",
    {
      schema: {
        body: {
          type: "object",
          additionalProperties: false,
          required: ["type"],
          properties: { type: TYPE_NAME, uuid: { type: "string", pattern: UUID } },
        },
        response: { 201: socketReply, ...errors },
      },
    },
    async (req, reply) => {
      const r = await link.ok({ op: "handle", request: { cmd: "create", ...req.body } });
      return reply.code(201).send(r);
    },
  );

  app.get<{ Params: { uuid: string } }>(
    "/api/v1/vgpus/:uuid",
    { schema: { params: uuidParams, response: { 200: vgpuSchema, ...errors } } },
    async (req) => one(req.params.uuid),
  );

  app.get<{ Params: { uuid: string } }>(
    "/api/v1/vgpus/:uuid/stats",
    {
      schema: {
        params: uuidParams,
        response: {
          200: {
            type: "object",
            properties: pick(vgpuSchema.properties, [
              "uuid",
              "share",
              "error",
              "stats",
              "regionReads",
              "regionWrites",
              "display",
            ]),
          },
          ...errors,
        },
      },
    },
    async (req) => one(req.params.uuid),
  );

  for (const [method, path, cmd] of [
    ["delete", "/api/v1/vgpus/:uuid", "remove"],
    ["post", "/api/v1/vgpus/:uuid/stop", "stop"],
  ] as const) {
    app[method]<{ Params: { uuid: string } }>(
      path,
      { schema: { params: uuidParams, response: { 204: { type: "null" }, ...errors } } },
      async (req, reply) => {
        await link.ok({ op: "handle", request: { cmd, uuid: req.params.uuid } });
        return reply.code(204).send();
      },
    );
  }

  app.get<{ Params: { uuid: string } }>(
    "/api/v1/vgpus/:uuid/qemu-args",
    {
      schema: {
        params: uuidParams,
        response: {
          200: {
            type: "object",
            properties: { socket: { type: "string" }, qemu: { type: "array", items: { type: "string" } } },
          },
          ...errors,
        },
      },
    },
    async (req) => link.ok({ op: "handle", request: { cmd: "qemu-args", uuid: req.params.uuid } }),
  );

  app.get<{ Params: { uuid: string } }>(
    "/api/v1/vgpus/:uuid/screenshot.png",
    { schema: { params: uuidParams, response: errors } },
    async (req, reply) => {
      const d = (await link.displays()).find((x) => x.uuid === req.params.uuid);
      if (!d) throw new ApiError("ENOENT", `vGPU ${req.params.uuid} is not running`);
      return reply.type("image/png").send(ctx.frames.png(d));
    },
  );

  app.get(
    "/api/v1/definitions",
    {
      schema: {
        response: {
          200: {
            type: "object",
            properties: {
              definitions: { type: "array", items: definitionSchema },
              broken: {
                type: "array",
                items: {
                  type: "object",
                  properties: { file: { type: "string" }, reason: { type: "string" } },
                },
              },
            },
          },
          ...errors,
        },
      },
    },
    async () => link.ok({ op: "definitions" }),
  );

  app.post<{ Body: { type: string; uuid?: string; name?: string; autostart?: boolean } }>(
    "/api/v1/definitions",
    {
      schema: {
        body: {
          type: "object",
          additionalProperties: false,
          required: ["type"],
          properties: {
            type: TYPE_NAME,
            uuid: { type: "string", pattern: UUID },
            name: { type: "string", maxLength: 128 },
            autostart: { type: "boolean" },
          },
        },
        response: { 201: definitionSchema, ...errors },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const definition: Definition = {
        uuid: b.uuid ?? randomUUID(),
        type: b.type,
        autostart: b.autostart ?? false,
        ...(b.name !== undefined ? { name: b.name } : {}),
      };
      await link.ok({ op: "define", definition });
      return reply.code(201).send(definition);
    },
  );

  app.patch<{ Params: { uuid: string }; Body: { type?: string; name?: string; autostart?: boolean } }>(
    "/api/v1/definitions/:uuid",
    {
      schema: {
        params: uuidParams,
        body: {
          type: "object",
          additionalProperties: false,
          properties: {
            type: TYPE_NAME,
            name: { type: "string", maxLength: 128 },
            autostart: { type: "boolean" },
          },
        },
        response: { 200: definitionSchema, ...errors },
      },
    },
    async (req) =>
      (await link.ok({ op: "modify", uuid: req.params.uuid, change: req.body })).definition as Definition,
  );

  app.delete<{ Params: { uuid: string } }>(
    "/api/v1/definitions/:uuid",
    { schema: { params: uuidParams, response: { 204: { type: "null" }, ...errors } } },
    async (req, reply) => {
      await link.ok({ op: "undefine", uuid: req.params.uuid });
      return reply.code(204).send();
    },
  );

  app.post<{ Params: { uuid: string } }>(
    "/api/v1/definitions/:uuid/start",
    { schema: { params: uuidParams, response: { 201: socketReply, ...errors } } },
    async (req, reply) =>
      reply.code(201).send(await link.ok({ op: "handle", request: { cmd: "start", uuid: req.params.uuid } })),
  );
}
