"""onephase from Python: an order service and a consumer, end to end.

The order service
  1. checks a rate limit for the customer,
  2. writes the order and its `orders.created` event in ONE transaction of its own database
     (the outbox table: the event is published if and only if the order commits),
  3. starts a saga that reserves stock and charges the customer (the participants are small
     HTTP handlers in this process), and waits for it,
  4. sends a signed webhook to a receiver (also in this process) that verifies it,
  5. takes a lease and makes a fenced write with its token: a stale holder's write is refused.
The consumer reads the events the server's relay published (the embedded log) and applies
each once, with an inbox table in its own database, even when it reads them twice.

Run against `onephase serve` with a relay from the app database to the embedded log:

    [[outbox.relay]]
    name = "orders"
    source = "postgres://.../app"
    sink = "log"
    [saga]
    allow_networks = ["127.0.0.0/8"]
    [webhook]
    allow_networks = ["127.0.0.0/8"]

    ONEPHASE_URL=http://127.0.0.1:7700 ONEPHASE_TOKEN=op_... \
    APP_DATABASE_URL=postgres://.../app CONSUMER_DATABASE_URL=postgres://.../consumer \
    python quickstart.py
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

from onephase import Client, Problem, uuid7, verify_webhook


def step(text: str) -> None:
    print(f"- {text}", flush=True)


class Participants(BaseHTTPRequestHandler):
    """The saga's participants and the webhook receiver, on one local port."""

    applied: dict[str, str] = {}  # idempotency key -> path: each key applied once
    webhooks: list[dict] = []
    seen_webhooks: set[str] = set()
    secret: str | None = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/hooks":
            try:
                msg_id = verify_webhook(Participants.secret or "", self.headers, body)
            except (ValueError, KeyError) as error:
                return self.answer(401, {"error": str(error)})
            if msg_id not in Participants.seen_webhooks:  # de-duplicate on webhook-id
                Participants.seen_webhooks.add(msg_id)
                Participants.webhooks.append(json.loads(body))
            return self.answer(204, None)
        key = self.headers["Idempotency-Key"]  # the same for every attempt of one call
        Participants.applied.setdefault(key, self.path)
        if self.path == "/payments/charge" and json.loads(body)["amount"] > 1000:
            return self.answer(402, {"error": "card declined"})  # a refusal: nothing charged
        return self.answer(200, {"ok": True, "key": key})

    def answer(self, status: int, document) -> None:
        data = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def register_latest(api: Client, definition: dict) -> None:
    """Registers `definition`; if its version exists with other content (the participants
    moved), registers it as the next version. Definitions are immutable; new runs take the
    latest version, runs in flight finish on theirs."""
    try:
        api.register_saga(definition)
    except Problem as problem:
        if problem.status != 409:
            raise
        latest = api.request("GET", f"/v1/sagas/{definition['name']}")["version"]
        api.register_saga({**definition, "version": latest + 1})


def main() -> int:
    api = Client(os.environ["ONEPHASE_URL"], os.environ["ONEPHASE_TOKEN"])
    app_db = os.environ["APP_DATABASE_URL"]
    consumer_db = os.environ["CONSUMER_DATABASE_URL"]
    local = ThreadingHTTPServer(("127.0.0.1", 0), Participants)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    here = f"http://127.0.0.1:{local.server_address[1]}"

    # Setup an operator does once (admin token): a saga definition, a webhook endpoint, a
    # rate-limit policy. Registering the same definition again is not an error.
    register_latest(api, {
        "name": "place_order", "version": 1,
        "defaults": {"timeout_ms": 5000, "backoff_base_ms": 20, "backoff_cap_ms": 200},
        "steps": [
            {"name": "reserve", "kind": "compensatable",
             "action": {"method": "POST", "url": f"{here}/inventory/reserve",
                        "body": {"sku": "{{input.sku}}"}},
             "compensation": {"method": "POST", "url": f"{here}/inventory/release",
                              "body": {"reservation": "{{call.action_key}}"}}},
            {"name": "charge", "kind": "pivot",
             "action": {"method": "POST", "url": f"{here}/payments/charge",
                        "body": {"amount": "{{input.amount}}"}}},
        ],
    })
    endpoint = api.create_endpoint(f"{here}/hooks", ["order.placed"])
    Participants.secret = api.endpoint_secret(endpoint["id"])
    api.define_limit("orders-per-customer", {
        "algorithm": "gcra", "limit": 5, "period_ms": 60_000, "burst": 5,
    })

    with psycopg.connect(app_db, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, customer text, "
                   "amount int, created_at timestamptz DEFAULT now())")
        db.execute("CREATE TABLE IF NOT EXISTS invoice_counter (name text PRIMARY KEY, "
                   "next int NOT NULL, fence bigint NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO invoice_counter (name, next) VALUES ('invoices', 1) "
                   "ON CONFLICT DO NOTHING")

    # 1. The rate limit, before any work.
    decision = api.check_limit("orders-per-customer", "customer-7")
    assert decision["allowed"], decision
    step(f"rate limit: allowed, {decision['remaining']} left this minute")

    # 2. The order and its event, in one transaction of the service's own database.
    order_id = uuid7()
    event = {"order": str(order_id), "customer": "customer-7", "amount": 120}
    with psycopg.connect(app_db) as db, db.transaction():
        db.execute("INSERT INTO orders (id, customer, amount) VALUES (%s, %s, %s)",
                   (order_id, "customer-7", 120))
        db.execute("INSERT INTO onephase_outbox (id, topic, key, payload, headers) "
                   "VALUES (%s, 'orders.created', %s, %s, %s)",
                   (uuid7(), str(order_id), json.dumps(event).encode(),
                    json.dumps({"correlation-id": f"order-{order_id}"})))
    step(f"order {order_id} and its event committed together")

    # 3. A saga: the same idempotency key (the order id) can never start it twice.
    started = api.start_saga("place_order", {"sku": "book-1", "amount": 120}, str(order_id))
    again = api.start_saga("place_order", {"sku": "book-1", "amount": 120}, str(order_id))
    assert again["id"] == started["id"] and not again["created"], again
    run = api.wait_for_run(started["id"])
    assert run["state"] == "completed", run
    step(f"saga {run['id']} completed; participants applied "
         f"{sorted(set(Participants.applied.values()))}")
    declined = api.start_saga("place_order", {"sku": "book-2", "amount": 5000}, str(uuid7()))
    run = api.wait_for_run(declined["id"])
    assert run["state"] == "compensated", run
    assert "/inventory/release" in Participants.applied.values()
    step("a declined charge compensated the reservation")

    # 4. A signed webhook, verified and de-duplicated by the receiver.
    sent = api.send_webhook("order.placed", event, f"webhook-{order_id}")
    repeat = api.send_webhook("order.placed", event, f"webhook-{order_id}")
    assert repeat["id"] == sent["id"] and repeat["duplicate"], repeat
    deadline = time.monotonic() + 30
    while not Participants.webhooks and time.monotonic() < deadline:
        time.sleep(0.05)
    # The body is {"type", "timestamp", "data"}: data is the payload, every digit as sent.
    assert [(w["type"], w["data"]) for w in Participants.webhooks] == [("order.placed", event)]
    step(f"webhook {sent['id']} delivered once and its signature verified")

    # 5. A lease and a fenced write: the write carries the token; a smaller one is refused.
    grant = api.acquire_lease("invoice-numbering", "python-quickstart", ttl_ms=10_000)
    try:
        with psycopg.connect(app_db) as db:
            row = db.execute(
                "UPDATE invoice_counter SET next = next + 1, fence = %s "
                "WHERE name = 'invoices' AND fence <= %s RETURNING next - 1",
                (grant["token"], grant["token"])).fetchone()
            assert row is not None, "the fenced write was refused"
            stale = db.execute(
                "UPDATE invoice_counter SET next = next + 1, fence = %s "
                "WHERE name = 'invoices' AND fence <= %s RETURNING next",
                (grant["token"] - 1, grant["token"] - 1)).fetchone()
            assert stale is None, "a stale token wrote"
    finally:
        api.release_lease("invoice-numbering", grant["token"])
    step(f"invoice {row[0]} numbered under fencing token {grant['token']}; a stale token was refused")

    # The consumer: apply each event once, with an inbox in its own database.
    with psycopg.connect(consumer_db, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS onephase_inbox (consumer text NOT NULL, "
                   "message_id uuid NOT NULL, processed_at timestamptz NOT NULL DEFAULT now(), "
                   "PRIMARY KEY (consumer, message_id))")
        db.execute("CREATE TABLE IF NOT EXISTS order_totals (customer text PRIMARY KEY, "
                   "orders int NOT NULL, amount int NOT NULL)")
    mine = []
    deadline = time.monotonic() + 30
    while not mine and time.monotonic() < deadline:
        mine = [r for r in api.read_topic("orders.created", limit=1000)
                if r["key"] == str(order_id)]
        time.sleep(0.1)
    assert mine, "the relay did not publish the order's event"
    applied = 0
    for _ in range(2):  # reading twice, as a consumer after a crash would
        for record in mine:
            with psycopg.connect(consumer_db) as db, db.transaction():
                fresh = db.execute(
                    "INSERT INTO onephase_inbox (consumer, message_id) VALUES ('totals', %s) "
                    "ON CONFLICT DO NOTHING RETURNING 1", (record["id"],)).fetchone()
                if fresh:
                    e = record["payload"]
                    db.execute(
                        "INSERT INTO order_totals VALUES (%s, 1, %s) ON CONFLICT (customer) "
                        "DO UPDATE SET orders = order_totals.orders + 1, "
                        "amount = order_totals.amount + EXCLUDED.amount",
                        (e["customer"], e["amount"]))
                    applied += 1
    assert applied == 1, applied
    with psycopg.connect(consumer_db) as db:
        total = db.execute("SELECT orders, amount FROM order_totals "
                           "WHERE customer = 'customer-7'").fetchone()
    assert total == (1, 120), total
    step("consumer applied the event once, though it read it twice")

    try:
        api.start_saga("no_such_saga", {}, "k")
        raise AssertionError("an unknown saga started")
    except Problem as problem:
        assert problem.status == 404, problem
        step(f"errors are problem documents: {problem.title}: {problem.detail}")

    # The endpoint points at this process, which is about to exit.
    api.request("DELETE", f"/v1/webhooks/endpoints/{endpoint['id']}")
    local.shutdown()
    print("quickstart: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
