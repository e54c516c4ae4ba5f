#!/usr/bin/env node
// Streams the examples' sensor signal through one exactly-once session (open-or-attach by name), paced like a
// sensor; prints one JSON line per acknowledged step, then a summary line. The failover test runs it (with the
// Python, asyncio Python and Go twins) through a replica killed with -9.
//
//   node testing/failover.js --session sensor-7 --steps 40 --pace-ms 50
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import { Client } from "../src/client.js";
import { sensorSignal } from "../src/signal.js";

const { values } = parseArgs({
  options: {
    target: { type: "string", default: process.env.STATESTREAM_TARGET || "localhost:50051" },
    model: { type: "string", default: "demo" },
    session: { type: "string", default: "failover-node" },
    steps: { type: "string", default: "40" },
    "pace-ms": { type: "string", default: "50" },
    "timeout-ms": { type: "string", default: "30000" },
    plain: { type: "boolean", default: false }, // a plain (pipelined, not exactly-once) session
  },
});

async function* paced(inputs, ms) {
  for (const x of inputs) {
    await sleep(ms);
    yield x;
  }
}

const client = new Client(values.target, { timeoutMs: Number(values["timeout-ms"]) });
try {
  const session = await client.openOrAttach(values.model, values.session, { exactlyOnce: !values.plain });
  const inputs = sensorSignal(Number(values.steps), session.info.features);
  let step = 0;
  for await (const r of session.steps(paced(inputs, Number(values["pace-ms"])))) {
    step += 1;
    console.log(JSON.stringify({ step, output: r.last, retries: client.retries }));
  }
  const st = await session.getState();
  console.log(JSON.stringify({ done: true, retries: client.retries, step_count: st.step_count }));
} catch (err) {
  console.error(`failover: ${err.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
