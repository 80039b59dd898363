// A small client for onephase's HTTP API: the calls a service makes, and the two helpers a
// service needs around them (a UUIDv7 for outbox rows, Standard Webhooks verification).
//
// Written by hand rather than generated: the calls a service makes are few, a generated client
// for the whole API (admin routes included) is thousands of lines to review, and this file
// reads top to bottom. /openapi.json describes everything else.

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/** An RFC 9457 problem document the server answered with. */
export class Problem extends Error {
  readonly type: string;
  readonly title: string;
  readonly detail: string;

  constructor(readonly status: number, document: Record<string, unknown>) {
    const title = String(document.title ?? "request failed");
    const detail = String(document.detail ?? "");
    super(`${title} (${status}): ${detail}`);
    this.type = String(document.type ?? "about:blank");
    this.title = title;
    this.detail = detail;
  }
}

export interface Grant {
  name: string;
  holder: string;
  /** The fencing token: send it with every write the lease guards. */
  token: number;
  expires_at: string;
}

export interface Decision {
  allowed: boolean;
  limit: number;
  remaining: number;
  reset_ms: number;
  retry_after_ms?: number;
}

export interface Run {
  id: string;
  state: string;
  created?: boolean;
  [field: string]: unknown;
}

export interface LogRecord {
  position: number;
  id: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, string>;
  created_at: string;
}

const RESTING = ["completed", "compensated", "aborted", "needs_operator"];

/** Calls one server with one bearer token. */
export class Client {
  constructor(
    readonly baseUrl: string,
    readonly token: string,
  ) {}

  /** Sends JSON, returns the JSON answer (undefined for an empty one); throws Problem. */
  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<T> {
    const response = await fetch(this.baseUrl.replace(/\/$/, "") + path, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      let document: Record<string, unknown>;
      try {
        document = JSON.parse(text) as Record<string, unknown>;
      } catch {
        document = { detail: text };
      }
      throw new Problem(response.status, document);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  // Sagas
  registerSaga(definition: Record<string, unknown>): Promise<unknown> {
    return this.request("POST", "/v1/sagas", definition);
  }

  startSaga(saga: string, input: unknown, idempotencyKey: string): Promise<Run> {
    return this.request("POST", `/v1/sagas/${saga}/runs`, { input }, {
      "idempotency-key": idempotencyKey,
    });
  }

  /** Polls a run until it completes, is compensated or aborted, or needs an operator. */
  async waitForRun(id: string, withinMs = 30_000): Promise<Run> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const run = await this.request<Run>("GET", `/v1/saga-runs/${id}`);
      if (RESTING.includes(run.state)) return run;
      if (Date.now() > deadline) throw new Error(`run ${id} is still ${run.state}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  // Webhooks
  createEndpoint(url: string, eventTypes: string[]): Promise<{ id: string }> {
    return this.request("POST", "/v1/webhooks/endpoints", { url, event_types: eventTypes });
  }

  async endpointSecret(id: string): Promise<string> {
    const keys = await this.request<{ key: string }[]>("GET", `/v1/webhooks/endpoints/${id}/keys`);
    const first = keys[0];
    if (!first) throw new Error(`endpoint ${id} has no key`);
    return first.key;
  }

  sendWebhook(
    eventType: string,
    payload: unknown,
    idempotencyKey: string,
  ): Promise<{ id: string; endpoints: number; duplicate: boolean }> {
    return this.request("POST", "/v1/webhooks/messages", { event_type: eventType, payload }, {
      "idempotency-key": idempotencyKey,
    });
  }

  // Leases
  acquireLease(name: string, holder: string, ttlMs: number, waitMs = 0): Promise<Grant> {
    return this.request("POST", `/v1/leases/${name}/acquire`, {
      holder,
      ttl_ms: ttlMs,
      wait_ms: waitMs,
    });
  }

  releaseLease(name: string, token: number): Promise<void> {
    return this.request("POST", `/v1/leases/${name}/release`, { token });
  }

  // Rate limits
  defineLimit(policy: string, spec: Record<string, unknown>): Promise<void> {
    return this.request("PUT", `/v1/limits/${policy}`, spec);
  }

  checkLimit(policy: string, key: string, cost = 1): Promise<Decision> {
    return this.request("POST", `/v1/limits/${policy}/check`, { key, cost });
  }

  // The embedded log an outbox relay publishes to (sink = "log")
  readTopic(topic: string, after = 0, limit = 100): Promise<LogRecord[]> {
    return this.request("GET", `/v1/outbox/${topic}?after=${after}&limit=${limit}`);
  }
}

/** A UUIDv7 (time-ordered): what outbox row ids should be. */
export function uuid7(): string {
  const bytes = randomBytes(16);
  const millis = BigInt(Date.now());
  for (let i = 0; i < 6; i++) bytes[i] = Number((millis >> BigInt(8 * (5 - i))) & 0xffn);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x70; // version 7
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80; // RFC 4122 variant
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Verifies a Standard Webhooks `v1` signature; returns the message id (`webhook-id`), the key
 * to de-duplicate on. Throws when the message is not authentic or too old.
 */
export function verifyWebhook(
  secret: string,
  headers: Record<string, string | string[] | undefined>,
  body: Buffer,
  toleranceSecs = 300,
): string {
  const id = String(headers["webhook-id"] ?? "");
  const timestamp = String(headers["webhook-timestamp"] ?? "");
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > toleranceSecs) {
    throw new Error("webhook timestamp outside the tolerance");
  }
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = createHmac("sha256", key)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
  for (const entry of String(headers["webhook-signature"] ?? "").split(" ")) {
    const [version, signature] = entry.split(",");
    if (version !== "v1" || !signature) continue;
    const given = Buffer.from(signature, "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected)) return id;
  }
  throw new Error("no webhook signature matches");
}
