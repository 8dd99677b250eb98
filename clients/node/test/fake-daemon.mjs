// A scripted stand-in for mlxd on a private socket, for client behaviour the real daemon
// cannot be made to show on demand (a fatal Busy, Busy forever) or shows only with timing
// luck (two next() calls waiting at once). It speaks the real codec: it answers the Hello
// with a Welcome and hands every later message to `onMessage(message, send)`.
import { rmSync } from "node:fs";
import { createServer } from "node:net";

import { FrameDecoder, PROTOCOL_VERSION, decodeClientMessage, encodeServerMessage } from "../dist/index.js";
import { tempDir } from "./helpers.mjs";

export const LIMITS = {
  max_frame_len: 1 << 20,
  max_texts_per_embed: 64,
  max_text_bytes: 1 << 16,
  max_in_flight: 64,
  max_leases: 16,
  max_tokens: 4096,
};

export async function fakeDaemon(onMessage) {
  const dir = tempDir();
  const path = `${dir}/fake.sock`;
  /** Every client message received after the Hello, in order. */
  const received = [];
  /** Their frame bodies, as they came. */
  const bodies = [];
  const sockets = new Set();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    const decoder = new FrameDecoder(1 << 20);
    const send = (message) => {
      if (socket.destroyed) return;
      const body = encodeServerMessage(message);
      const frame = Buffer.alloc(4 + body.length);
      frame.writeUInt32BE(body.length, 0);
      frame.set(body, 4);
      socket.write(frame);
    };
    send.close = () => socket.end();
    socket.on("data", (chunk) => {
      for (const body of decoder.push(chunk)) {
        const message = decodeClientMessage(body);
        if (message.type === "Hello") {
          send({ type: "Welcome", protocol_version: PROTOCOL_VERSION, daemon_version: "fake", session_id: 1, limits: LIMITS });
        } else {
          received.push(message);
          bodies.push(Uint8Array.from(body));
          onMessage(message, send);
        }
      }
    });
  });
  await new Promise((resolve) => server.listen(path, resolve));
  return {
    path,
    received,
    bodies,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A daemon whose every Generate streams tokens "t0", "t1", ... (ids 0, 1, ...) up to its
 * max_tokens, honouring credit as mlxd does: one event per credit, then `Generated`.
 * `credits` records each Credit grant.
 */
export function creditedGenerator() {
  const streams = new Map();
  const credits = [];
  const pump = (stream, send) => {
    while (stream.credit > 0 && stream.sent < stream.total) {
      stream.credit -= 1;
      send({ type: "Event", id: stream.id, event: { type: "Token", text: `t${stream.sent}`, token: stream.sent } });
      stream.sent += 1;
    }
    if (stream.sent === stream.total && !stream.done) {
      stream.done = true;
      send({
        type: "Response",
        id: stream.id,
        body: {
          type: "Generated",
          finish_reason: "Length",
          prompt_tokens: 1,
          completion_tokens: stream.total,
          prompt_tokens_per_s: 1,
          generation_tokens_per_s: 1,
          cached_prompt_tokens: 0,
        },
      });
    }
  };
  const onMessage = (message, send) => {
    if (message.type === "Request" && message.body.type === "Generate") {
      const stream = { id: message.id, credit: message.body.initial_credit, sent: 0, total: message.body.params.max_tokens, done: false };
      streams.set(message.id, stream);
      // A little later, as a real stream would start.
      setTimeout(() => pump(stream, send), 10);
    } else if (message.type === "Credit") {
      credits.push(message.events);
      const stream = streams.get(message.id);
      if (stream) {
        stream.credit += message.events;
        pump(stream, send);
      }
    } else if (message.type === "Request") {
      send({ type: "Response", id: message.id, body: { type: "Pong" } });
    }
  };
  return { onMessage, credits };
}
