// onephase from TypeScript: an order service and a consumer, end to end. The same steps as
// examples/python/quickstart.py; examples/README.md says how to run it.
//
// The order service checks a rate limit, writes the order and its event in one transaction
// of its own database (the outbox table), runs a saga whose participants are HTTP handlers in
// this process, sends a signed webhook that a receiver here verifies, and makes a fenced write
// under a lease. The consumer applies the published events once, with an inbox table in its
// own database, though it reads them twice.

import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";

import { Client, Problem, uuid7, verifyWebhook } from "./onephase.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name} (see examples/README.md)`);
  return value;
};
const step = (text: string) => console.log(`- ${text}`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// The saga's participants and the webhook receiver, on one local port.
const applied = new Map<string, string>(); // idempotency key -> path: each key applied once
const webhooks: { type: string; data: unknown }[] = [];
const seenWebhooks = new Set<string>();
let secret = "";

function answer(res: ServerResponse, status: number, document?: unknown) {
  const data = document === undefined ? "" : JSON.stringify(document);
  res.writeHead(status, { "content-type": "application/json" }).end(data);
}

async function handle(req: IncomingMessage, res: ServerResponse) {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks);
  if (req.url === "/hooks") {
    let id: string;
    try {
      id = verifyWebhook(secret, req.headers, body);
    } catch (error) {
      return answer(res, 401, { error: String(error) });
    }
    if (!seenWebhooks.has(id)) {
      // de-duplicate on webhook-id
      seenWebhooks.add(id);
      webhooks.push(JSON.parse(body.toString()));
    }
    return answer(res, 204);
  }
  const key = String(req.headers["idempotency-key"]); // the same for every attempt of one call
  if (!applied.has(key)) applied.set(key, req.url ?? "");
  if (req.url === "/payments/charge" && JSON.parse(body.toString()).amount > 1000) {
    return answer(res, 402, { error: "card declined" }); // a refusal: nothing charged
  }
  return answer(res, 200, { ok: true, key });
}

/** Registers `definition`; if its version exists with other content, as the next version. */
async function registerLatest(api: Client, definition: Record<string, unknown>) {
  try {
    await api.registerSaga(definition);
  } catch (error) {
    if (!(error instanceof Problem) || error.status !== 409) throw error;
    const latest = await api.request<{ version: number }>("GET", `/v1/sagas/${definition.name}`);
    await api.registerSaga({ ...definition, version: latest.version + 1 });
  }
}

async function inTransaction<T>(url: string, work: (db: pg.Client) => Promise<T>): Promise<T> {
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  try {
    await db.query("BEGIN");
    const result = await work(db);
    await db.query("COMMIT");
    return result;
  } catch (error) {
    await db.query("ROLLBACK").catch(() => undefined);
    throw error;
  } finally {
    await db.end();
  }
}

async function main() {
  const api = new Client(env("ONEPHASE_URL"), env("ONEPHASE_TOKEN"));
  const appDb = env("APP_DATABASE_URL");
  const consumerDb = env("CONSUMER_DATABASE_URL");
  const local = createServer((req, res) => {
    handle(req, res).catch((error) => answer(res, 500, { error: String(error) }));
  });
  await new Promise<void>((resolve) => local.listen(0, "127.0.0.1", resolve));
  const here = `http://127.0.0.1:${(local.address() as AddressInfo).port}`;

  // Setup an operator does once (admin token).
  await registerLatest(api, {
    name: "place_order_ts",
    version: 1,
    defaults: { timeout_ms: 5000, backoff_base_ms: 20, backoff_cap_ms: 200 },
    steps: [
      {
        name: "reserve",
        kind: "compensatable",
        action: { method: "POST", url: `${here}/inventory/reserve`, body: { sku: "{{input.sku}}" } },
        compensation: {
          method: "POST",
          url: `${here}/inventory/release`,
          body: { reservation: "{{call.action_key}}" },
        },
      },
      {
        name: "charge",
        kind: "pivot",
        action: { method: "POST", url: `${here}/payments/charge`, body: { amount: "{{input.amount}}" } },
      },
    ],
  });
  const endpoint = await api.createEndpoint(`${here}/hooks`, ["order.placed"]);
  secret = await api.endpointSecret(endpoint.id);
  await api.defineLimit("orders-per-customer-ts", {
    algorithm: "gcra",
    limit: 5,
    period_ms: 60_000,
    burst: 5,
  });
  await inTransaction(appDb, async (db) => {
    await db.query(
      "CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, customer text, amount int, " +
        "created_at timestamptz DEFAULT now())",
    );
    await db.query(
      "CREATE TABLE IF NOT EXISTS invoice_counter (name text PRIMARY KEY, next int NOT NULL, " +
        "fence bigint NOT NULL DEFAULT 0)",
    );
    await db.query(
      "INSERT INTO invoice_counter (name, next) VALUES ('invoices', 1) ON CONFLICT DO NOTHING",
    );
  });

  // 1. The rate limit, before any work.
  const decision = await api.checkLimit("orders-per-customer-ts", "customer-7");
  assert.ok(decision.allowed, JSON.stringify(decision));
  step(`rate limit: allowed, ${decision.remaining} left this minute`);

  // 2. The order and its event, in one transaction of the service's own database.
  const orderId = uuid7();
  const event = { order: orderId, customer: "customer-7", amount: 120 };
  await inTransaction(appDb, async (db) => {
    await db.query("INSERT INTO orders (id, customer, amount) VALUES ($1, $2, $3)", [
      orderId,
      "customer-7",
      120,
    ]);
    await db.query(
      "INSERT INTO onephase_outbox (id, topic, key, payload, headers) " +
        "VALUES ($1, 'orders.created', $2, $3, $4)",
      [uuid7(), orderId, Buffer.from(JSON.stringify(event)), { "correlation-id": `order-${orderId}` }],
    );
  });
  step(`order ${orderId} and its event committed together`);

  // 3. A saga: the same idempotency key (the order id) can never start it twice.
  const started = await api.startSaga("place_order_ts", { sku: "book-1", amount: 120 }, orderId);
  const again = await api.startSaga("place_order_ts", { sku: "book-1", amount: 120 }, orderId);
  assert.equal(again.id, started.id);
  assert.equal(again.created, false);
  let run = await api.waitForRun(started.id);
  assert.equal(run.state, "completed", JSON.stringify(run));
  step(`saga ${run.id} completed; participants applied ${[...new Set(applied.values())].sort()}`);
  const declined = await api.startSaga("place_order_ts", { sku: "book-2", amount: 5000 }, uuid7());
  run = await api.waitForRun(declined.id);
  assert.equal(run.state, "compensated", JSON.stringify(run));
  assert.ok([...applied.values()].includes("/inventory/release"));
  step("a declined charge compensated the reservation");

  // 4. A signed webhook, verified and de-duplicated by the receiver.
  const sent = await api.sendWebhook("order.placed", event, `webhook-${orderId}`);
  const repeat = await api.sendWebhook("order.placed", event, `webhook-${orderId}`);
  assert.equal(repeat.id, sent.id);
  assert.equal(repeat.duplicate, true);
  for (const deadline = Date.now() + 30_000; webhooks.length === 0 && Date.now() < deadline; ) {
    await sleep(50);
  }
  // The body is {"type", "timestamp", "data"}: data is the payload, every digit as sent.
  assert.deepEqual(
    webhooks.map((w) => [w.type, w.data]),
    [["order.placed", event]],
  );
  step(`webhook ${sent.id} delivered once and its signature verified`);

  // 5. A lease and a fenced write: the write carries the token; a smaller one is refused.
  const grant = await api.acquireLease("invoice-numbering-ts", "ts-quickstart", 10_000);
  try {
    const fenced = "UPDATE invoice_counter SET next = next + 1, fence = $1 " +
      "WHERE name = 'invoices' AND fence <= $1 RETURNING next - 1 AS number";
    const number = await inTransaction(appDb, async (db) => {
      const written = await db.query(fenced, [grant.token]);
      assert.equal(written.rowCount, 1, "the fenced write was refused");
      const stale = await db.query(fenced, [grant.token - 1]);
      assert.equal(stale.rowCount, 0, "a stale token wrote");
      return written.rows[0].number as number;
    });
    step(`invoice ${number} numbered under fencing token ${grant.token}; a stale token was refused`);
  } finally {
    await api.releaseLease("invoice-numbering-ts", grant.token);
  }

  // The consumer: apply each event once, with an inbox in its own database.
  await inTransaction(consumerDb, async (db) => {
    await db.query(
      "CREATE TABLE IF NOT EXISTS onephase_inbox (consumer text NOT NULL, message_id uuid NOT NULL, " +
        "processed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, message_id))",
    );
    await db.query(
      "CREATE TABLE IF NOT EXISTS order_totals (customer text PRIMARY KEY, orders int NOT NULL, " +
        "amount int NOT NULL)",
    );
  });
  let mine: Awaited<ReturnType<Client["readTopic"]>> = [];
  for (const deadline = Date.now() + 30_000; mine.length === 0 && Date.now() < deadline; ) {
    mine = (await api.readTopic("orders.created", 0, 1000)).filter((r) => r.key === orderId);
    await sleep(100);
  }
  assert.ok(mine.length > 0, "the relay did not publish the order's event");
  let appliedEvents = 0;
  for (let pass = 0; pass < 2; pass++) {
    // reading twice, as a consumer after a crash would
    for (const record of mine) {
      appliedEvents += await inTransaction(consumerDb, async (db) => {
        const fresh = await db.query(
          "INSERT INTO onephase_inbox (consumer, message_id) VALUES ('totals-ts', $1) " +
            "ON CONFLICT DO NOTHING",
          [record.id],
        );
        if (fresh.rowCount !== 1) return 0;
        const e = record.payload as { customer: string; amount: number };
        await db.query(
          "INSERT INTO order_totals VALUES ($1, 1, $2) ON CONFLICT (customer) DO UPDATE SET " +
            "orders = order_totals.orders + 1, amount = order_totals.amount + EXCLUDED.amount",
          [`${e.customer}-ts`, e.amount],
        );
        return 1;
      });
    }
  }
  assert.equal(appliedEvents, 1);
  step("consumer applied the event once, though it read it twice");

  try {
    await api.startSaga("no_such_saga", {}, "k");
    assert.fail("an unknown saga started");
  } catch (error) {
    assert.ok(error instanceof Problem && error.status === 404, String(error));
    step(`errors are problem documents: ${error.title}: ${error.detail}`);
  }

  // The endpoint points at this process, which is about to exit.
  await api.request("DELETE", `/v1/webhooks/endpoints/${endpoint.id}`);
  local.close();
  console.log("quickstart: ok");
}

main().catch((error) => {
  console.error(`quickstart failed: ${error instanceof Error ? error.stack : error}`);
  process.exit(1);
});
