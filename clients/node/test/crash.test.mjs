// A daemon that dies (SIGKILL, with its workers) while a client has a stream and a request
// in flight: both reject at once with a typed error, and the session says it is closed.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { ConnectionClosedError, DEFAULT_PARAMS, connect } from "../dist/index.js";
import { TEST_TIMEOUT, startDaemon } from "./helpers.mjs";

let daemon;
after(async () => {
  await daemon?.stop();
}, { timeout: TEST_TIMEOUT });

/** Rejects with `message` if `promise` has not settled within `ms`. */
function within(ms, promise, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

test("when the daemon is killed mid-stream, streams and requests in flight reject promptly with ConnectionClosedError", { timeout: TEST_TIMEOUT }, async () => {
  daemon = await startDaemon();
  const client = await connect({ socket: daemon.socket, fallback: false, clientName: "node-crash" });
  try {
    // A stream, read one token into it (then paused at its window of 2)...
    const stream = client.generate("smollm2", "Once upon a time", { max_tokens: 200, temperature: 0 }, { window: 2 });
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).done, false);
    // ... and a plain request that stays in flight (a stream of 1 credit, never topped up).
    const request = client.request({
      type: "Generate",
      model: { type: "Name", value: "smollm2" },
      input: { type: "Raw", value: "Once upon a time" },
      params: { ...DEFAULT_PARAMS, max_tokens: 200, temperature: 0, stop: [] },
      initial_credit: 1,
      priority: "Interactive",
      deadline_ms: null,
    });
    request.catch(() => {});
    assert.equal(client.inFlight, 2);

    const killedAt = Date.now();
    daemon.kill();
    const readRest = (async () => {
      for (;;) if ((await iterator.next()).done) throw new Error("the stream ended as if it had finished");
    })();
    const [streamErr, requestErr, summaryErr] = await within(
      3000,
      Promise.all([readRest.catch((e) => e), request.catch((e) => e), stream.summary.catch((e) => e)]),
      "the client did not notice the daemon's death within 3 s",
    );
    const elapsed = Date.now() - killedAt;
    for (const err of [streamErr, requestErr, summaryErr]) {
      assert.ok(err instanceof ConnectionClosedError, String(err));
      assert.equal(err.code, "Closed");
    }
    assert.ok(elapsed < 2000, `noticed after ${elapsed} ms`);
    assert.equal(client.closed, true);
    assert.equal(client.inFlight, 0);
    await assert.rejects(client.ping(), ConnectionClosedError);
  } finally {
    await client.close();
  }
});
