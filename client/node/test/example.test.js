import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { sensorSignal } from "../src/signal.js";
import { MODEL, target } from "../testing/live.js";

const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../example.js");
const run = promisify(execFile);

test("the sensor signal is exact in float32", () => {
  const xs = sensorSignal(100, 3);
  for (const v of xs.flat()) assert.ok(Number.isInteger(v * 256) && Math.abs(v) <= 1, `${v}`);
  assert.deepEqual(xs[0], [-0.75, -0.078125, 0.59375]);
  assert.equal(xs[1][2], 0.640625);
});

test("example.js --json streams the signal and reads the state back", async (t) => {
  const addr = target(t);
  if (!addr) return;
  const { stdout } = await run(process.execPath, [EXAMPLE, "--target", addr, "--model", MODEL, "--steps", "25", "--json"]);
  const report = JSON.parse(stdout);
  assert.equal(report.inputs.length, 25);
  assert.equal(report.outputs.length, 25);
  assert.equal(report.step_count, 25);
  assert.ok(Object.keys(report.states).length > 0);
});

test("example.js prints one line per timestep", async (t) => {
  const addr = target(t);
  if (!addr) return;
  const { stdout } = await run(process.execPath, [EXAMPLE, "--target", addr, "--model", MODEL, "--steps", "3"]);
  assert.equal(stdout.match(/output=/g).length, 3);
  assert.match(stdout, /state after 3 steps/);
});
