// Busy and its retry policy, on a second daemon that admits one embedding request at a
// time (`--queue-capacity 1`), so concurrent requests are refused with Busy; last, what a
// client sees when that daemon shuts down.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { BusyError, ShutdownError, connect, jitter } from "../dist/index.js";
import { eventually, startDaemon, TEST_TIMEOUT } from "./helpers.mjs";

let daemon;
const longText = "a fairly long sentence to keep the model busy for a moment. ".repeat(30);
const CONCURRENT = 8;

before(async () => {
  daemon = await startDaemon(["--queue-capacity", "1", "--embed-max-batch", "1"]);
  // Load the model first, so the refusals below come from the queue alone.
  const warm = await connect({ socket: daemon.socket, fallback: false });
  await warm.load("minilm");
  await warm.close();
}, { timeout: TEST_TIMEOUT });

after(async () => {
  await daemon?.stop();
}, { timeout: TEST_TIMEOUT });

test("without retries, concurrent requests past the queue get BusyError with a retry hint", { timeout: TEST_TIMEOUT }, async () => {
  const client = await connect({ socket: daemon.socket, fallback: false, retry: false });
  try {
    const results = await Promise.allSettled(
      Array.from({ length: CONCURRENT }, () => client.embed("minilm", [longText])),
    );
    const refused = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    const served = results.filter((r) => r.status === "fulfilled");
    assert.ok(served.length >= 1, "nothing was served");
    assert.ok(refused.length >= 1, "nothing was refused: the queue was not full");
    for (const err of refused) {
      assert.ok(err instanceof BusyError, String(err));
      assert.equal(err.code, "Busy");
      assert.equal(typeof err.retryAfterMs, "number");
      assert.ok(err.retryAfterMs > 0, `retry_after_ms ${err.retryAfterMs}`);
    }
  } finally {
    await client.close();
  }
});

test("with retries, the same idempotent requests all succeed", { timeout: TEST_TIMEOUT }, async () => {
  const client = await connect({ socket: daemon.socket, fallback: false, retry: { maxRetries: 50, maxWaitMs: 500 } });
  try {
    const vectors = await Promise.all(Array.from({ length: CONCURRENT }, () => client.embed("minilm", [longText])));
    assert.equal(vectors.length, CONCURRENT);
    for (const [vector] of vectors) assert.equal(vector.length, 384);
    // A request may opt out of the policy and see the refusal itself.
    const once = await Promise.allSettled(
      Array.from({ length: CONCURRENT }, () => client.embed("minilm", [longText], { retry: false })),
    );
    assert.ok(once.some((r) => r.status === "rejected" && r.reason instanceof BusyError));
  } finally {
    await client.close();
  }
  const status = await connect({ socket: daemon.socket, fallback: false }).then(async (c) => {
    const s = await c.status();
    await c.close();
    return s;
  });
  const minilm = status.models.find((m) => m.name === "minilm");
  assert.ok(Number(minilm.sched.busy) >= 1, `sched.busy = ${minilm.sched.busy}`);
});

test("retry waits are 0.5 to 1.5 times the daemon's hint, spread out", { timeout: TEST_TIMEOUT }, () => {
  const waits = Array.from({ length: 1000 }, () => jitter(10));
  assert.ok(waits.every((w) => w >= 5 && w < 15), "a wait outside [5, 15)");
  assert.ok(new Set(waits).size > 900);
  assert.ok(jitter(0) >= 0.5 && jitter(0) < 1.5, "no hint: at least about 1 ms");
});

test("when the daemon shuts down, the session ends with a typed error and leases close quietly", { timeout: TEST_TIMEOUT }, async () => {
  const client = await connect({ socket: daemon.socket, fallback: false });
  const lease = await client.lease("minilm");
  await daemon.stop();
  assert.ok(await eventually(10_000, () => client.closed), "the client did not notice the shutdown");
  const err = await client.ping().catch((e) => e);
  // PROTOCOL.md §4: at shutdown the daemon sends Fatal(Shutdown), then closes.
  assert.ok(err instanceof ShutdownError, String(err));
  assert.equal(err.fatal, true);
  await lease.close(); // the lease ended with the session
  await client.close();
});
