"""A small client for onephase's HTTP API: the calls a service makes, and the two helpers a
service needs around them (a UUIDv7 for outbox rows, Standard Webhooks verification).

Written by hand rather than generated: the calls a service makes are few, a generated client
for the whole API (admin routes included) is thousands of lines to review, and this file
reads top to bottom. /openapi.json describes everything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
import uuid


class Problem(Exception):
    """An RFC 9457 problem document the server answered with: `type`, `title`, `status` and
    `detail` (what went wrong and what to do)."""

    def __init__(self, status: int, document: dict):
        self.status = status
        self.type = document.get("type", "about:blank")
        self.title = document.get("title", "request failed")
        self.detail = document.get("detail", "")
        super().__init__(f"{self.title} ({status}): {self.detail}")


class Client:
    """Calls one server with one bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, headers=None):
        """Sends JSON, returns the JSON answer (None for an empty one); raises Problem for an
        error answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                document = json.loads(text)
            except ValueError:
                document = {"detail": text.decode(errors="replace")}
            raise Problem(error.code, document) from None
        return json.loads(text) if text else None

    # Sagas
    def register_saga(self, definition: dict) -> dict:
        """Registers a definition (admin token); the same document again is not an error."""
        return self.request("POST", "/v1/sagas", definition)

    def start_saga(self, saga: str, input: dict, idempotency_key: str) -> dict:
        """Starts a run; the same key again returns the same run."""
        return self.request(
            "POST", f"/v1/sagas/{saga}/runs", {"input": input},
            {"Idempotency-Key": idempotency_key},
        )

    def saga_run(self, run_id: str) -> dict:
        return self.request("GET", f"/v1/saga-runs/{run_id}")

    def wait_for_run(self, run_id: str, within: float = 30.0) -> dict:
        """Polls a run until it completes, is compensated or aborted, or needs an operator."""
        deadline = time.monotonic() + within
        while True:
            run = self.saga_run(run_id)
            if run["state"] in ("completed", "compensated", "aborted", "needs_operator"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['state']} after {within} s")
            time.sleep(0.1)

    # Webhooks
    def create_endpoint(self, url: str, event_types=None) -> dict:
        return self.request(
            "POST", "/v1/webhooks/endpoints", {"url": url, "event_types": event_types}
        )

    def endpoint_secret(self, endpoint_id: str) -> str:
        return self.request("GET", f"/v1/webhooks/endpoints/{endpoint_id}/keys")[0]["key"]

    def send_webhook(self, event_type: str, payload, idempotency_key: str) -> dict:
        return self.request(
            "POST", "/v1/webhooks/messages",
            {"event_type": event_type, "payload": payload},
            {"Idempotency-Key": idempotency_key},
        )

    # Leases
    def acquire_lease(self, name: str, holder: str, ttl_ms: int, wait_ms: int = 0) -> dict:
        """A grant: `token` is the fencing token to send with every write the lease guards."""
        return self.request(
            "POST", f"/v1/leases/{name}/acquire",
            {"holder": holder, "ttl_ms": ttl_ms, "wait_ms": wait_ms},
        )

    def release_lease(self, name: str, token: int) -> None:
        self.request("POST", f"/v1/leases/{name}/release", {"token": token})

    # Rate limits
    def define_limit(self, policy: str, spec: dict) -> None:
        """Defines or redefines a policy (admin token)."""
        self.request("PUT", f"/v1/limits/{policy}", spec)

    def check_limit(self, policy: str, key: str, cost: int = 1) -> dict:
        """A decision: `allowed`, `remaining`, and `retry_after_ms` when refused."""
        return self.request("POST", f"/v1/limits/{policy}/check", {"key": key, "cost": cost})

    # The embedded log an outbox relay publishes to (sink = "log")
    def read_topic(self, topic: str, after: int = 0, limit: int = 100) -> list:
        return self.request("GET", f"/v1/outbox/{topic}?after={after}&limit={limit}")


def uuid7() -> uuid.UUID:
    """A UUIDv7 (time-ordered): what outbox row ids should be."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def verify_webhook(secret: str, headers, body: bytes, tolerance: int = 300) -> str:
    """Verifies a Standard Webhooks `v1` signature; returns the message id (`webhook-id`), the
    key to de-duplicate on. Raises ValueError when the message is not authentic or too old."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        raise ValueError("webhook timestamp outside the tolerance")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in headers["webhook-signature"].split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return msg_id
    raise ValueError("no webhook signature matches")
