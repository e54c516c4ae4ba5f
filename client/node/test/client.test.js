import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Client, grpc } from "../src/client.js";
import { MODEL, TOKEN, bits, ramp, target } from "../testing/live.js";

const clients = [];
after(() => clients.forEach((c) => c.close()));

function connect(t, options = { token: TOKEN }) {
  const addr = target(t);
  if (!addr) return undefined;
  const c = new Client(addr, options);
  clients.push(c);
  return c;
}

test("ListModels and GetModel describe the model", async (t) => {
  const client = connect(t);
  if (!client) return;
  const names = (await client.models()).map((m) => m.name);
  assert.ok(names.includes(MODEL), `${MODEL} not in ${names}`);
  const info = await client.model(MODEL);
  assert.ok(info.features > 0 && info.output_size > 0 && info.layers.length > 0);
  for (const l of info.layers) assert.ok(l.units > 0 && l.state_names.length > 0);
  await assert.rejects(client.model("no-such-model"), (e) => e.code === grpc.status.NOT_FOUND);
});

test("unary steps, the stream and one multi-timestep request walk the same states", async (t) => {
  const client = connect(t);
  if (!client) return;
  const [unary, streamed, whole] = await Promise.all([1, 2, 3].map(() => client.openSession(MODEL)));
  const inputs = ramp(12, unary.info.features);
  const outputs = [];
  for (const [i, x] of inputs.entries()) {
    const r = await unary.step(x);
    assert.equal(r.stepCount, i + 1);
    assert.equal(r.output.length, 1);
    assert.equal(r.last.length, unary.info.output_size);
    outputs.push(r.last);
  }
  const results = await streamed.streamAll(inputs);
  assert.equal(results.length, inputs.length);
  results.forEach((r, i) => assert.deepEqual(bits(r.last), bits(outputs[i])));
  const [a, b] = [await unary.getState(), await streamed.getState()];
  assert.equal(a.step_count, inputs.length);
  assert.equal(b.step_count, inputs.length);
  assert.deepEqual(b.layers.map((l) => [l.layer, bits(l.h), bits(l.c)]), a.layers.map((l) => [l.layer, bits(l.h), bits(l.c)]));

  const r = await whole.step(inputs, { returnSequences: true, returnState: true });
  assert.equal(r.output.length, inputs.length);
  assert.equal(r.stepCount, inputs.length);
  r.output.forEach((row, i) => row.forEach((v, j) => assert.ok(Math.abs(v - outputs[i][j]) <= 1e-5, `row ${i}: ${v} vs ${outputs[i][j]}`)));
  assert.deepEqual(Object.keys(r.states).sort(), unary.info.layers.map((l) => l.name).sort());
  await Promise.all([unary, streamed, whole].map((s) => s.close()));
});

test("SetState continues a session bit-exactly on another one", async (t) => {
  const client = connect(t);
  if (!client) return;
  const a = await client.openSession(MODEL);
  const inputs = ramp(6, a.info.features);
  for (const x of inputs.slice(0, 3)) await a.step(x);
  const saved = await a.getState();
  const b = await client.openSession(MODEL);
  const restored = await b.setState(saved);
  assert.equal(restored.step_count, 3);
  for (const x of inputs.slice(3)) {
    const [ra, rb] = [await a.step(x), await b.step(x)];
    assert.deepEqual(bits(rb.last), bits(ra.last));
  }
  const c = await client.openSession(MODEL, { initialStates: saved.layers });
  const st = await c.getState();
  assert.deepEqual(st.layers.map((l) => bits(l.h.concat(l.c))), saved.layers.map((l) => bits(l.h.concat(l.c))));
  await Promise.all([a, b, c].map((s) => s.close()));
});

test("exactly-once: a retried sequence number replays, a gap is FAILED_PRECONDITION", async (t) => {
  const client = connect(t);
  if (!client) return;
  const s = await client.openSession(MODEL);
  const [x] = ramp(1, s.info.features);
  const first = await s.step(x, { sequenceNumber: 1 });
  const again = await s.step(x, { sequenceNumber: 1 });
  assert.equal(again.replayed, true);
  assert.equal(again.stepCount, 1);
  assert.deepEqual(bits(again.last), bits(first.last));
  await assert.rejects(s.step(x, { sequenceNumber: 5 }), (e) => e.code === grpc.status.FAILED_PRECONDITION);
  await s.close();
});

test("the stream stays open after an in-band error", async (t) => {
  const client = connect(t);
  if (!client) return;
  const s = await client.openSession(MODEL);
  const [x] = ramp(1, s.info.features);
  const stream = s.stream();
  for (const input of [x, x.slice(0, 1), x]) stream.send(input);
  stream.end();
  const replies = [];
  for await (const r of stream.replies()) replies.push(r);
  assert.equal(replies.length, 3);
  assert.equal(replies[0].result.stepCount, 1);
  assert.equal(replies[1].error.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(replies[2].result.stepCount, 2);
  await s.close();
});

test("status codes: ALREADY_EXISTS, INVALID_ARGUMENT, NOT_FOUND", async (t) => {
  const client = connect(t);
  if (!client) return;
  const s = await client.openSession(MODEL);
  await assert.rejects(client.openSession(MODEL, { sessionId: s.id }), (e) => e.code === grpc.status.ALREADY_EXISTS);
  await assert.rejects(s.step([1]), (e) => e.code === grpc.status.INVALID_ARGUMENT && /expects/.test(e.details));
  await s.close();
  await assert.rejects(s.getState(), (e) => e.code === grpc.status.NOT_FOUND);
});

test("bearer token (with STATESTREAM_TOKEN, a server with --auth-token-file)", async (t) => {
  if (!TOKEN) {
    t.skip("STATESTREAM_TOKEN not set: the server runs without auth");
    return;
  }
  const client = connect(t);
  if (!client) return;
  const s = await client.openSession(MODEL);
  await s.step(ramp(1, s.info.features)[0]);
  await s.close();
  const anonymous = connect(t, {});
  await assert.rejects(anonymous.models(), (e) => e.code === grpc.status.UNAUTHENTICATED);
  const wrong = connect(t, { token: `${TOKEN}x` });
  await assert.rejects(wrong.models(), (e) => e.code === grpc.status.UNAUTHENTICATED);
});
