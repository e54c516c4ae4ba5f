#!/usr/bin/env node
// Opens a session, streams a synthetic sensor signal over StreamSteps one timestep per message, prints the
// outputs and reads the session's state back.
//
//   node example.js --target localhost:50051 --model demo --steps 20
//   node example.js --json      # one JSON document: inputs, outputs, final state
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { Client } from "./src/client.js";
import { sensorSignal } from "./src/signal.js";

/** Runs the example; returns the report (also what --json prints). */
export async function run({ target, model = "demo", steps = 20, token = "" }) {
  const client = new Client(target, { token });
  try {
    const session = await client.openSession(model);
    try {
      const inputs = sensorSignal(steps, session.info.features);
      const results = await session.streamAll(inputs);
      const state = await session.getState();
      const states = {};
      for (const l of state.layers) states[l.layer] = l.c.length ? { h: l.h, c: l.c } : { h: l.h };
      return {
        model, session_id: session.id, inputs, outputs: results.map((r) => r.last),
        step_count: state.step_count, states,
      };
    } finally {
      await session.close().catch(() => {});
    }
  } finally {
    client.close();
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: process.env.STATESTREAM_TARGET || "localhost:50051" },
      model: { type: "string", default: "demo" },
      steps: { type: "string", default: "20" },
      token: { type: "string", default: process.env.STATESTREAM_TOKEN || "" },
      json: { type: "boolean", default: false },
    },
  });
  const report = await run({ ...values, steps: Number(values.steps) });
  if (values.json) {
    console.log(JSON.stringify(report));
    return;
  }
  console.log(`session ${report.session_id} on model "${report.model}"`);
  report.inputs.forEach((x, t) => console.log(`t=${String(t).padStart(3)} input=[${x.join(" ")}] output=[${report.outputs[t].join(" ")}]`));
  console.log(`state after ${report.step_count} steps:`);
  for (const [layer, s] of Object.entries(report.states)) {
    for (const [name, values] of Object.entries(s)) console.log(`  ${layer} ${name}=[${values.join(" ")}]`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  main().catch((err) => {
    console.error(`example: ${err.message}`);
    process.exit(1);
  });
}
