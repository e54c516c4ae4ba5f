#!/usr/bin/env node
// Opens N concurrent sessions, steps each M times (unary calls, or one exactly-once stream per session) and
// prints the step latencies' p50 and p99 and the throughput: the Node side of the load-test recipe.
//
//   node loadtest.js --sessions 64 --steps 200            # unary steps
//   node loadtest.js --sessions 64 --steps 200 --stream   # one StreamSteps call per session, lockstep
//   node loadtest.js --json                               # one JSON document
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { Client } from "./src/client.js";
import { sensorSignal } from "./src/signal.js";

/** The nearest-rank quantile of sorted numbers. */
export function quantile(sorted, q) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** Steps one session through inputs; each latency is from a step's send to its reply, in ms. */
async function drive(session, inputs, stream) {
  const out = [];
  if (!stream) {
    for (const x of inputs) {
      const t0 = performance.now();
      await session.step(x);
      out.push(performance.now() - t0);
    }
    return out;
  }
  let sent = 0;
  async function* timed() {
    for (const x of inputs) {
      sent = performance.now();
      yield x;
    }
  }
  for await (const _ of session.steps(timed())) out.push(performance.now() - sent);
  return out;
}

/** Runs the load; resolves to the report (also what --json prints). */
export async function run({ target, model = "demo", sessions = 16, steps = 100, stream = false, token = "" }) {
  const client = new Client(target, { token });
  try {
    const open = await Promise.all(Array.from({ length: sessions }, () => client.openSession(model, { exactlyOnce: stream })));
    const inputs = sensorSignal(steps, open[0].info.features);
    const t0 = performance.now();
    const settled = await Promise.allSettled(open.map((s) => drive(s, inputs, stream)));
    const elapsed = (performance.now() - t0) / 1000;
    const counts = await Promise.all(open.map((s) => s.close()));
    const failed = settled.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    const all = settled.flatMap((r) => r.value).sort((a, b) => a - b);
    return { sessions, steps, mode: stream ? "stream" : "unary", completed: all.length, p50_ms: quantile(all, 0.5),
      p99_ms: quantile(all, 0.99), steps_per_second: all.length / elapsed, server_steps: counts.reduce((a, b) => a + b, 0),
      elapsed_seconds: elapsed };
  } finally {
    client.close();
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: process.env.STATESTREAM_TARGET || "localhost:50051" },
      model: { type: "string", default: "demo" },
      sessions: { type: "string", default: "16" },
      steps: { type: "string", default: "100" },
      stream: { type: "boolean", default: false },
      token: { type: "string", default: process.env.STATESTREAM_TOKEN || "" },
      json: { type: "boolean", default: false },
    },
  });
  const rep = await run({ ...values, sessions: Number(values.sessions), steps: Number(values.steps) });
  if (values.json) {
    console.log(JSON.stringify(rep));
    return;
  }
  console.log(`${rep.sessions} sessions x ${rep.steps} steps (${rep.mode}): p50 ${rep.p50_ms.toFixed(3)} ms, ` +
    `p99 ${rep.p99_ms.toFixed(3)} ms, ${rep.steps_per_second.toFixed(0)} steps/s`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  main().catch((err) => {
    console.error(`loadtest: ${err.message}`);
    process.exit(1);
  });
}
