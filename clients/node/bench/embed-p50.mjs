#!/usr/bin/env node
// Micro-benchmark: sequential one-short-text embeddings through the Node client.
//
//     node bench/embed-p50.mjs --socket S --model minilm --n 300
//
// Leases the model, warms up, then times N embeddings of one short text each, one after
// another, and prints one JSON line: {"client":"node","p50_us":...,"p90_us":...,"n":N}.
// Same method as the Python client's bench_embed.py (texts, warm-up, nearest-rank
// percentiles), so the two are comparable. Busy is not retried: a benchmark sees it.
import { parseArgs } from "node:util";

import { connect } from "../dist/index.js";

const usage = "usage: node bench/embed-p50.mjs [--socket PATH] [--model NAME] [--n N] [--warmup N]";
let values;
try {
  ({ values } = parseArgs({
    options: {
      socket: { type: "string" },
      model: { type: "string", default: "minilm" },
      n: { type: "string", default: "300" },
      warmup: { type: "string", default: "20" },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (err) {
  console.error(`${err.message}\n${usage}`);
  process.exit(2);
}
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const n = Number(values.n);
const warmup = Number(values.warmup);
if (!Number.isInteger(n) || n < 1 || !Number.isInteger(warmup) || warmup < 0) {
  console.error(`--n must be an integer >= 1 and --warmup >= 0\n${usage}`);
  process.exit(2);
}

/** Nearest-rank percentile of already sorted values. */
function percentile(sorted, fraction) {
  const index = Math.min(sorted.length - 1, Math.max(0, Math.round(fraction * sorted.length) - 1));
  return sorted[index];
}

const client = await connect({ socket: values.socket, fallback: false, retry: false, clientName: "embed-p50" });
const timings = [];
try {
  const lease = await client.lease(values.model);
  try {
    for (let i = 0; i < warmup; i++) await lease.embed([`warm-up sentence ${i}`]);
    for (let i = 0; i < n; i++) {
      const texts = [`benchmark sentence number ${i} part 0`]; // as `mlxctl bench` sends
      const started = process.hrtime.bigint();
      await lease.embed(texts);
      timings.push(Number(process.hrtime.bigint() - started) / 1000);
    }
  } finally {
    await lease.close();
  }
} finally {
  await client.close();
}
timings.sort((a, b) => a - b);
const round = (us) => Math.round(us * 10) / 10;
console.log(JSON.stringify({ client: "node", p50_us: round(percentile(timings, 0.5)), p90_us: round(percentile(timings, 0.9)), n }));
