import assert from "node:assert/strict";
import { after, test } from "node:test";

import { AlreadyExistsError, CancelledError, Client, InvalidArgumentError, NotFoundError, StatestreamError, grpc,
  retryable } from "../src/client.js";
import { MODEL, TOKEN, bits, ramp, target } from "../testing/live.js";

const clients = [];
after(() => clients.forEach((c) => c.close()));

function connect(t) {
  const addr = target(t);
  if (!addr) return undefined;
  const c = new Client(addr, { token: TOKEN });
  clients.push(c);
  return c;
}

/** Outputs of inputs stepped through a plain session, one unary step each: what every other path must equal. */
async function reference(client, inputs) {
  const s = await client.openSession(MODEL);
  const out = [];
  for (const x of inputs) out.push((await s.step(x)).last);
  await s.close();
  return out;
}

test("openOrAttach opens, then re-attaches and resumes the exactly-once numbering", async (t) => {
  const client = connect(t);
  if (!client) return;
  const inputs = ramp(9, 3);
  const want = await reference(client, inputs);
  const id = `node-ooa-${process.pid}-${Date.now()}`;
  const s = await client.openOrAttach(MODEL, id, { exactlyOnce: true });
  const got = [];
  for (const x of inputs.slice(0, 4)) got.push((await s.step(x)).last);
  const restarted = connect(t); // a restarted sensor: same name, a new process
  const s2 = await restarted.openOrAttach(MODEL, id, { exactlyOnce: true });
  assert.equal(s2.lastSequenceNumber, 4);
  assert.ok(s2.exactlyOnce);
  for await (const r of s2.steps(inputs.slice(4))) got.push(r.last);
  assert.deepEqual(got.map(bits), want.map(bits));
  const st = await s2.getState();
  assert.equal(st.step_count, 9);
  assert.equal(st.last_sequence_number, 9);
  await assert.rejects(s2.step(inputs[0], { sequenceNumber: 10 }), InvalidArgumentError);
  await assert.rejects(client.openOrAttach("no-such-model", `${id}-x`), NotFoundError);
  await s2.close();
});

test("a group steps with masks and replays a repeated sequence number", async (t) => {
  const client = connect(t);
  if (!client) return;
  const inputs = ramp(2, 3);
  const want = await reference(client, inputs);
  const g = await client.openGroup(MODEL, { size: 3 });
  const r = await g.step([inputs[0], inputs[0], inputs[0]], { masked: [1] });
  assert.deepEqual(bits(r.outputs[0][0]), bits(want[0]));
  assert.deepEqual(r.outputs[1][0], new Array(want[0].length).fill(0));
  const r2 = await g.step([inputs[1], inputs[0], inputs[1]], { sequenceNumber: 1 });
  assert.deepEqual(bits(r2.outputs[2][0]), bits(want[1]));
  assert.deepEqual(bits(r2.outputs[1][0]), bits(want[0]));
  assert.ok((await g.step([inputs[1], inputs[0], inputs[1]], { sequenceNumber: 1 })).replayed);
  assert.equal((await g.sessions[1].getState()).step_count, 1);
  await assert.rejects(g.step([inputs[0]]), InvalidArgumentError);
  await g.close();
});

test("stepFrame opens missing sessions and reports entry errors", async (t) => {
  const client = connect(t);
  if (!client) return;
  const inputs = ramp(1, 3);
  const want = await reference(client, inputs);
  const ids = [`node-frame-a-${Date.now()}`, `node-frame-b-${Date.now()}`];
  const r = await client.stepFrame(MODEL, ids, [inputs[0], [0, 0, NaN]], { openIfMissing: true });
  assert.deepEqual(bits(r.outputs[0][0]), bits(want[0]));
  assert.equal(r.outputs[1], null);
  assert.ok(r.errors.get(1) instanceof InvalidArgumentError && r.errors.size === 1);
  for (const id of ids) await (await client.attach(id, MODEL)).close().catch(() => {});
});

test("error classes carry the code; the retry rule; an AbortSignal cancels a call", async (t) => {
  const client = connect(t);
  if (!client) return;
  const s = await client.openSession(MODEL);
  await assert.rejects(client.openSession(MODEL, { sessionId: s.id }), (e) =>
    e instanceof AlreadyExistsError && e instanceof StatestreamError && e.code === grpc.status.ALREADY_EXISTS);
  const gone = await client.attach("node-no-such-session", MODEL);
  await assert.rejects(gone.step([0, 0, 0]), (e) => e instanceof NotFoundError && e.code === grpc.status.NOT_FOUND);
  const cases = [[grpc.status.UNAVAILABLE, "connection refused", true], [grpc.status.CANCELLED, "reset", true],
    [grpc.status.INTERNAL, "RST_STREAM with error code 2", true],
    [grpc.status.INTERNAL, "the model run failed; nothing was applied", false],
    [grpc.status.DEADLINE_EXCEEDED, "attempt", true], [grpc.status.FAILED_PRECONDITION, "expected 3", false]];
  for (const [code, details, want] of cases) assert.equal(retryable({ code, details }), want, details);
  const aborted = AbortSignal.abort(new Error("shutting down"));
  await assert.rejects(s.step([0, 0, 0], { signal: aborted }), (e) => e instanceof CancelledError || e.aborted);
  const eo = await client.openOrAttach(MODEL, `node-abort-${Date.now()}`, { exactlyOnce: true });
  await assert.rejects(eo.step([0, 0, 0], { signal: aborted }), (e) => e.aborted === true); // not retried
  assert.equal((await eo.getState()).step_count, 0);
  await eo.close();
  await s.close();
});

test("a pipelined stream outlasts the reply deadline, and a slow caller is not a hung server", async (t) => {
  const client = connect(t);
  if (!client) return;
  const s = await client.openSession(MODEL);
  async function* paced() {
    for (let i = 0; i < 40; i++) {
      await new Promise((resolve) => setTimeout(resolve, 25)); // 1 s in all: longer than the deadline
      yield [0.1, 0.2, 0.3];
    }
  }
  let n = 0;
  for await (const _ of s.steps(paced(), { replyTimeoutMs: 300 })) n += 1;
  let held = 0;
  for await (const _ of s.steps(ramp(3, 3), { replyTimeoutMs: 300 })) {
    await new Promise((resolve) => setTimeout(resolve, 400)); // longer than the deadline, with a result in hand
    held += 1;
  }
  assert.equal(n, 40);
  assert.equal(held, 3);
  await s.close();
});
