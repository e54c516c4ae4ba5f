// statestream Node client: @grpc/grpc-js with the .proto loaded at run time by @grpc/proto-loader.
//
//   import { Client } from "@statestream/client";
//   const client = new Client("localhost:50051");
//   const session = await client.openSession("demo");
//   const { output } = await session.step([0.1, 0.2, 0.3]);
//
// Errors are StatestreamError with a numeric gRPC `code` (grpc.status), also for the in-band errors of a stream.
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The contract in this repository; pass `protoPath` when the client lives elsewhere. */
export const DEFAULT_PROTO = path.resolve(HERE, "../../../proto/statestream/v1/statestream.proto");
export const DEFAULT_TIMEOUT_MS = 10_000;
/** The header naming a call's session, for a proxy's affinity (HAProxy `balance hdr(x-session-id)`). */
export const SESSION_HEADER = "x-session-id";
export { grpc };

const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, arrays: true, oneofs: true };

/** Loads the proto; returns the statestream.v1 package (service constructor and message types). */
export function loadProto(protoPath = DEFAULT_PROTO) {
  const definition = protoLoader.loadSync(protoPath, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).statestream.v1;
}

/** A gRPC status (grpc.status.*) with the server's message. */
export class StatestreamError extends Error {
  constructor(code, details) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = "StatestreamError";
    this.code = code;
    this.details = details;
  }

  static from(err) {
    return err instanceof StatestreamError ? err : new StatestreamError(err.code ?? grpc.status.UNKNOWN, err.details ?? err.message);
  }
}

/** A connection to a statestream server. */
export class Client {
  /**
   * @param {string} target "host:port"
   * @param {{token?: string, timeoutMs?: number, credentials?: grpc.ChannelCredentials, protoPath?: string,
   *          channelOptions?: object}} [options] token: sent as "authorization: Bearer TOKEN"
   */
  constructor(target = "localhost:50051", options = {}) {
    const pkg = loadProto(options.protoPath);
    this.stub = new pkg.StateStreamService(target, options.credentials ?? grpc.credentials.createInsecure(),
      options.channelOptions ?? {});
    this.token = options.token ?? "";
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** Metadata of every call: the bearer token, if any, and x-session-id when the call names a session. */
  metadata(sessionId = "") {
    const md = new grpc.Metadata();
    if (this.token) md.set("authorization", `Bearer ${this.token}`);
    if (sessionId) md.set(SESSION_HEADER, sessionId);
    return md;
  }

  /** One unary call with this client's deadline and token; resolves to the response message. */
  call(method, request, timeoutMs = this.timeoutMs, sessionId = "") {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata(sessionId), { deadline: Date.now() + timeoutMs }, (err, reply) =>
        err ? reject(StatestreamError.from(err)) : resolve(reply));
    });
  }

  close() {
    this.stub.close();
  }

  async models() {
    return (await this.call("ListModels", {})).models;
  }

  async model(name) {
    return (await this.call("GetModel", { name })).model;
  }

  /**
   * Opens a session on `model`.
   * @param {{sessionId?: string, idleTimeoutSeconds?: number, initialStates?: Array<{layer, h, c}>}} [options]
   */
  async openSession(model, options = {}) {
    const reply = await this.call("OpenSession", {
      model, session_id: options.sessionId ?? "", idle_timeout_seconds: options.idleTimeoutSeconds ?? 0,
      initial_states: options.initialStates ?? [],
    }, this.timeoutMs, options.sessionId ?? "");
    return new Session(this, reply.session_id, reply.model);
  }

  /** A Session for an already open session id. */
  async attach(sessionId, model) {
    return new Session(this, sessionId, await this.model(model));
  }
}

/** One server-side session: its recurrent states stay on the server between calls; every call carries x-session-id. */
export class Session {
  constructor(client, id, info) {
    this.client = client;
    this.id = id;
    this.info = info;
  }

  /** input: F numbers (one timestep), T x F nested, or T*F flat; Keras's per-call choices in `options`. */
  request(input, { returnSequences = false, returnState = false, sequenceNumber } = {}) {
    const req = { session_id: this.id, input: input.flat(), return_sequences: returnSequences, return_state: returnState };
    if (sequenceNumber !== undefined && sequenceNumber !== null) req.sequence_number = sequenceNumber;
    return req;
  }

  /** {output: rows of output_size numbers (T rows with returnSequences, else 1), last, states, stepCount, replayed, raw} */
  result(reply) {
    const width = this.info.output_size;
    const output = [];
    for (let i = 0; i + width <= reply.output.length; i += width) output.push(reply.output.slice(i, i + width));
    const states = {};
    for (const l of reply.states) states[l.layer] = l.c.length ? { h: l.h, c: l.c } : { h: l.h };
    return { output, last: output.at(-1), states, stepCount: reply.step_count, replayed: reply.replayed, raw: reply };
  }

  /** A unary call about this session (x-session-id set). */
  call(method, request) {
    return this.client.call(method, request, this.client.timeoutMs, this.id);
  }

  async step(input, options = {}) {
    return this.result(await this.call("Step", this.request(input, options)));
  }

  /** A StreamSteps call bound to this session (no deadline unless `timeoutMs`). */
  stream({ timeoutMs } = {}) {
    const opts = timeoutMs ? { deadline: Date.now() + timeoutMs } : {};
    return new StepStream(this, this.client.stub.StreamSteps(this.client.metadata(this.id), opts));
  }

  /** Streams every input over one StreamSteps call; resolves to the results in order, rejects on the first error. */
  async streamAll(inputs, options = {}) {
    const stream = this.stream(options);
    for (const x of inputs) stream.send(x, options);
    stream.end();
    const results = [];
    try {
      for await (const r of stream) results.push(r);
    } catch (err) {
      stream.cancel();
      throw err;
    }
    if (results.length !== inputs.length) {
      throw new StatestreamError(grpc.status.UNKNOWN, `stream ended after ${results.length} of ${inputs.length} responses`);
    }
    return results;
  }

  /** {session_id, model, layers: [{layer, h, c}], step_count, last_sequence_number} */
  async getState() {
    return (await this.call("GetState", { session_id: this.id })).state;
  }

  /** Overwrites states (every layer) and, when given, the counters; takes what getState returned. */
  async setState({ layers, step_count, last_sequence_number }) {
    const req = { session_id: this.id, layers };
    if (step_count !== undefined) req.step_count = step_count;
    if (last_sequence_number !== undefined) req.last_sequence_number = last_sequence_number;
    return (await this.call("SetState", req)).state;
  }

  /** Closes the session; resolves to its step count. */
  async close() {
    return (await this.call("CloseSession", { session_id: this.id })).step_count;
  }
}

/** One StreamSteps call: send() requests, iterate results (for await); an in-band error throws for that request. */
export class StepStream {
  constructor(session, call) {
    this.session = session;
    this.call = call;
  }

  send(input, options = {}) {
    this.call.write({ step: this.session.request(input, options) });
  }

  /** No more requests; iteration ends after the last response. */
  end() {
    this.call.end();
  }

  cancel() {
    this.call.cancel();
  }

  /**
   * Yields {result} or, for an in-band error, {error: StatestreamError}; the stream goes on after it.
   * A transport-level failure throws.
   */
  async *replies() {
    try {
      for await (const reply of this.call) {
        yield reply.error ? { error: new StatestreamError(reply.error.code, reply.error.message) }
          : { result: this.session.result(reply.step) };
      }
    } catch (err) {
      throw StatestreamError.from(err);
    }
  }

  /** Results in order; throws the first in-band error. */
  async *[Symbol.asyncIterator]() {
    for await (const r of this.replies()) {
      if (r.error) throw r.error;
      yield r.result;
    }
  }
}
