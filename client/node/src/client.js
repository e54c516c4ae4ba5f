// statestream Node client: @grpc/grpc-js with the .proto (shipped in this package) loaded by @grpc/proto-loader.
//
//   import { Client } from "@statestream/client";
//   const client = new Client("localhost:50051");
//   const session = await client.openOrAttach("demo", "sensor-7", { exactlyOnce: true });
//   const { last } = await session.step([0.1, 0.2, 0.3]);
//
// Errors are the StatestreamError family (NotFoundError, ...) with a numeric gRPC `code` (grpc.status), also for
// the in-band errors of a stream. Every call takes `{ signal, timeoutMs }`: an AbortSignal and a deadline.
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { AlreadyExistsError, DeadlineExceededError, InvalidArgumentError, StatestreamError, UnavailableError,
  errorFor } from "./errors.js";
import { DEFAULT_RETRY, withRetries } from "./retry.js";

export * from "./errors.js";
export { DEFAULT_RETRY, retryable, SERVER_INTERNAL_MARK } from "./retry.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The contract, shipped inside this package (a copy of the repository's proto/, checked equal by its tests). */
export const DEFAULT_PROTO = path.resolve(HERE, "../proto/statestream/v1/statestream.proto");
/** A restarted server or a recovered replica is found again within about a second, as in the Python client. */
export const DEFAULT_CHANNEL_OPTIONS = Object.freeze({ "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 1000, "grpc.max_receive_message_length": 64 * 1024 * 1024 });
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

/** Numbers as the wire's raw tensor bytes: little-endian float32, row-major (the *_raw fields). */
export function encodeFloats(values) {
  const buf = Buffer.alloc(4 * values.length);
  for (let i = 0; i < values.length; i++) buf.writeFloatLE(values[i], 4 * i);
  return buf;
}

/** Raw little-endian float32 bytes as numbers; the size must be a multiple of 4. */
export function decodeFloats(buf) {
  if (buf.length % 4) throw errorFor(grpc.status.INTERNAL, `${buf.length} raw bytes are not whole float32 values`);
  const out = new Array(buf.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = buf.readFloatLE(4 * i);
  return out;
}

/** A response's floats: its raw bytes decoded if the server sent them, else the repeated field. */
function floatsOf(values, raw) {
  return raw && raw.length ? decodeFloats(raw) : values;
}

/** Layer states as callers read them ({layer, h, c} numbers), from raw or repeated fields. */
function decodeStates(layers) {
  return layers.map((l) => ({ layer: l.layer, h: floatsOf(l.h, l.h_raw), c: floatsOf(l.c, l.c_raw) }));
}

/** Layer states ({layer, h, c}) in their raw form for a request. */
function rawStates(layers) {
  return layers.map((l) => ({ layer: l.layer, h_raw: encodeFloats(l.h ?? []), c_raw: encodeFloats(l.c ?? []) }));
}

/** x as a flat list of numbers: F numbers, T x F nested, or T*F flat (the server checks the size: INVALID_ARGUMENT). */
function flatInput(input) {
  return Array.from(input).flat();
}

function abortError(signal) {
  const err = new StatestreamError(grpc.status.CANCELLED, `aborted: ${signal.reason?.message ?? signal.reason}`);
  err.aborted = true;
  return err;
}

/** Cancels `call` when `signal` aborts; returns the listener's remover. */
function onAbort(signal, cancel) {
  if (!signal) return () => {};
  signal.addEventListener("abort", cancel, { once: true });
  return () => signal.removeEventListener("abort", cancel);
}

/** A connection to a statestream server. */
export class Client {
  /**
   * @param {string} target "host:port"
   * @param {{token?: string, timeoutMs?: number, credentials?: grpc.ChannelCredentials, protoPath?: string,
   *          channelOptions?: object, retry?: object}} [options] token: sent as "authorization: Bearer TOKEN";
   *          timeoutMs: the deadline of each call (of each exactly-once step with its retries); retry: the
   *          backoff of exactly-once sessions (DEFAULT_RETRY's fields)
   */
  constructor(target = "localhost:50051", options = {}) {
    const pkg = loadProto(options.protoPath);
    this.stub = new pkg.StateStreamService(target, options.credentials ?? grpc.credentials.createInsecure(),
      { ...DEFAULT_CHANNEL_OPTIONS, ...options.channelOptions });
    this.token = options.token ?? "";
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.retries = 0; // attempts resent by exactly-once sessions, over this client's life
  }

  /** Metadata of every call: the bearer token, if any, and x-session-id when the call names a session. */
  metadata(sessionId = "", waitForReady = false) {
    const md = new grpc.Metadata(waitForReady ? { waitForReady: true } : undefined);
    if (this.token) md.set("authorization", `Bearer ${this.token}`);
    if (sessionId) md.set(SESSION_HEADER, sessionId);
    return md;
  }

  /**
   * One unary call with a deadline (timeoutMs, default the client's) and the token; resolves to the reply.
   * An aborted `signal` cancels it (the rejection is a CANCELLED error with `aborted` set).
   */
  call(method, request, { timeoutMs = this.timeoutMs, sessionId = "", signal, waitForReady = false } = {}) {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      let remove = () => {};
      const call = this.stub[method](request, this.metadata(sessionId, waitForReady), { deadline: Date.now() + timeoutMs },
        (err, reply) => {
          remove();
          if (!err) resolve(reply);
          else reject(signal?.aborted ? abortError(signal) : StatestreamError.from(err));
        });
      remove = onAbort(signal, () => call.cancel());
    });
  }

  /** A unary call safe to repeat (a numbered step, a read, a named open), resent per the retry rules. */
  async retrying(method, request, { timeoutMs = this.timeoutMs, sessionId = "", signal } = {}) {
    const { value, retries } = await withRetries(
      (attemptMs, isRetry) => this.call(method, request, { timeoutMs: attemptMs, sessionId, signal, waitForReady: isRetry }),
      { policy: this.retry, timeoutMs, signal });
    this.retries += retries;
    return value;
  }

  close() {
    this.stub.close();
  }

  async models(options = {}) {
    return (await this.call("ListModels", {}, options)).models;
  }

  async model(name, options = {}) {
    return (await this.call("GetModel", { name }, options)).model;
  }

  /**
   * Opens a session on `model`. exactlyOnce: the session numbers its steps and retries them through
   * failures; with a sessionId the open is retried too, and ALREADY_EXISTS after a retry, for a session
   * that has not stepped, is taken as this call's own open whose answer was lost.
   * @param {{sessionId?: string, idleTimeoutSeconds?: number, initialStates?: Array<{layer, h, c}>,
   *          exactlyOnce?: boolean, signal?: AbortSignal, timeoutMs?: number}} [options]
   */
  async openSession(model, options = {}) {
    const sessionId = options.sessionId ?? "";
    const req = { model, session_id: sessionId, idle_timeout_seconds: options.idleTimeoutSeconds ?? 0,
      initial_states: rawStates(options.initialStates ?? []) };
    const how = { ...options, sessionId };
    const retry = Boolean(options.exactlyOnce && sessionId);
    let reply;
    try {
      reply = await (retry ? this.retrying("OpenSession", req, how) : this.call("OpenSession", req, how));
    } catch (err) {
      if (!(retry && err instanceof AlreadyExistsError && err.attempts > 1)) throw err;
      const s = await this.attach(sessionId, model, { ...options, exactlyOnce: true });
      if (s.lastSequenceNumber || s.attachedStepCount) throw err;
      return s;
    }
    return new Session(this, reply.session_id, reply.model, { exactlyOnce: options.exactlyOnce });
  }

  /** A Session for an already open session id; exactlyOnce: the numbering resumes from the server's (one GetState). */
  async attach(sessionId, model, options = {}) {
    const s = new Session(this, sessionId, await this.model(model, options), { exactlyOnce: options.exactlyOnce });
    if (options.exactlyOnce) {
      const st = await s.getState(options);
      s.lastSequenceNumber = st.last_sequence_number;
      s.attachedStepCount = st.step_count;
    }
    return s;
  }

  /**
   * The named session, opened if it is not open, else attached (a restarted sensor picks up where it was);
   * exactlyOnce resumes the numbering from the server's last sequence number. A session open on another
   * model is refused (FailedPreconditionError).
   */
  async openOrAttach(model, sessionId, options = {}) {
    if (!sessionId) throw new InvalidArgumentError("openOrAttach needs a session id");
    try {
      return await this.openSession(model, { ...options, sessionId });
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
    const s = await this.attach(sessionId, model, { ...options, exactlyOnce: true });
    const { model: open } = await s.getState(options);
    if (open && open !== model) throw errorFor(grpc.status.FAILED_PRECONDITION, `session ${sessionId} is open on model ${open}, not ${model}`);
    s.exactlyOnce = Boolean(options.exactlyOnce);
    return s;
  }

  /**
   * Opens a session group: `size` new sessions or the given `sessionIds`, stepped together by Group.step.
   * @param {{size?: number, sessionIds?: string[], groupId?: string, idleTimeoutSeconds?: number}} [options]
   */
  async openGroup(model, options = {}) {
    const groupId = options.groupId ?? "";
    const reply = await this.call("OpenGroup", { model, size: options.size ?? 0, session_ids: options.sessionIds ?? [],
      group_id: groupId, idle_timeout_seconds: options.idleTimeoutSeconds ?? 0 }, { ...options, sessionId: groupId });
    return new Group(this, reply.group_id, reply.session_ids, reply.model);
  }

  /**
   * Steps many sessions of one model with one message: inputs[i] for sessionIds[i]. Resolves to
   * {outputs: [entry][row][output_size] (null for a failed entry), stepCounts, errors: Map(index -> error)}.
   * @param {{openIfMissing?: boolean, returnSequences?: boolean, sequenceNumbers?: number[]}} [options]
   */
  async stepFrame(model, sessionIds, inputs, options = {}) {
    const info = await this.model(model, options);
    const flats = inputs.map((x) => flatInput(x));
    if (flats.length !== sessionIds.length || flats.some((f) => f.length !== flats[0].length)) {
      throw new InvalidArgumentError("a frame takes one input of the same T per session");
    }
    const reply = await this.call("StepFrame", { model, session_ids: sessionIds, inputs_raw: encodeFloats(flats.flat()),
      timesteps: flats[0].length / info.features, open_if_missing: Boolean(options.openIfMissing),
      return_sequences: Boolean(options.returnSequences), sequence_numbers: options.sequenceNumbers ?? [],
      raw_output: true }, options);
    const outputs = split(floatsOf(reply.outputs, reply.outputs_raw), sessionIds.length, reply.rows, info.output_size);
    const errors = new Map(reply.errors.map((e) => [e.index, errorFor(e.error.code, e.error.message)]));
    for (const i of errors.keys()) outputs[i] = null;
    return { outputs, stepCounts: reply.step_counts, errors };
  }
}

/** n x rows x width values as [n][rows][width]. */
function split(values, n, rows, width) {
  return Array.from({ length: n }, (_, i) => Array.from({ length: rows }, (_, r) =>
    values.slice((i * rows + r) * width, (i * rows + r + 1) * width)));
}

/** One server-side session: its recurrent states stay on the server between calls; every call carries x-session-id. */
export class Session {
  /**
   * exactlyOnce: the session numbers its steps (sequence number = last acknowledged + 1) and resends a step
   * with the same number on UNAVAILABLE, CANCELLED, an INTERNAL that did not come from our server or a timed
   * out attempt, with jittered backoff until the deadline; `steps` resumes a broken stream on a new call.
   */
  constructor(client, id, info, { exactlyOnce = false } = {}) {
    this.client = client;
    this.id = id;
    this.info = info;
    this.exactlyOnce = Boolean(exactlyOnce);
    this.lastSequenceNumber = 0;
  }

  /** input: F numbers (one timestep), T x F nested, or T*F flat; Keras's per-call choices in `options`. */
  request(input, { returnSequences = false, returnState = false, sequenceNumber } = {}) {
    const req = { session_id: this.id, input_raw: encodeFloats(flatInput(input)), raw_output: true,
      return_sequences: returnSequences, return_state: returnState };
    if (sequenceNumber !== undefined && sequenceNumber !== null) req.sequence_number = sequenceNumber;
    return req;
  }

  /** {output: rows of output_size numbers (T rows with returnSequences, else 1), last, states, stepCount, replayed, raw} */
  result(reply) {
    const output = split(floatsOf(reply.output, reply.output_raw), 1, reply.rows, this.info.output_size)[0];
    const states = {};
    for (const l of decodeStates(reply.states)) states[l.layer] = l.c.length ? { h: l.h, c: l.c } : { h: l.h };
    return { output, last: output.at(-1), states, stepCount: reply.step_count, replayed: reply.replayed, raw: reply };
  }

  /** A unary call about this session (x-session-id set); retried when the session is exactly-once and `retry`. */
  call(method, request, options = {}, retry = false) {
    const how = { ...options, sessionId: this.id };
    return retry && this.exactlyOnce ? this.client.retrying(method, request, how) : this.client.call(method, request, how);
  }

  /** One step; an exactly-once session numbers it itself (do not pass sequenceNumber). */
  async step(input, options = {}) {
    if (!this.exactlyOnce) return this.result(await this.call("Step", this.request(input, options), options));
    if (options.sequenceNumber !== undefined) {
      throw new InvalidArgumentError("an exactly-once session numbers its steps itself; do not pass sequenceNumber");
    }
    const seq = this.lastSequenceNumber + 1;
    const reply = await this.call("Step", this.request(input, { ...options, sequenceNumber: seq }), options, true);
    this.lastSequenceNumber = seq;
    return this.result(reply);
  }

  /** A StreamSteps call bound to this session (no deadline unless `timeoutMs`), for pipelined steps. */
  stream({ timeoutMs, signal } = {}) {
    const opts = timeoutMs ? { deadline: Date.now() + timeoutMs } : {};
    const call = this.client.stub.StreamSteps(this.client.metadata(this.id), opts);
    onAbort(signal, () => call.cancel());
    return new StepStream(this, call);
  }

  /**
   * Results of `inputs` (an iterable or async iterable), in order, over StreamSteps. An exactly-once session sends
   * one step at a time, each reply due within the attempt's timeout, and resumes a broken call on a new one from
   * the last acknowledged step (each step with its retries within `timeoutMs`, default the client's); any other
   * session pipelines them on one call, each reply due within `replyTimeoutMs` (default the client's timeoutMs)
   * of its step (DeadlineExceededError), the whole call bounded only by `timeoutMs` when given.
   */
  async *steps(inputs, options = {}) {
    if (!this.exactlyOnce) {
      const stream = this.stream(options);
      const replyMs = options.replyTimeoutMs ?? this.client.timeoutMs;
      const clock = new ReplyClock(replyMs, () => stream.cancel());
      let failed; // the caller's inputs threw: raised after the replies before it
      let done = false; // the replies ended (or failed): stop taking inputs
      const feeding = (async () => {
        for await (const x of inputs) {
          if (done) return;
          stream.send(x, options);
          clock.sent();
        }
        stream.end();
      })().catch((err) => {
        failed = err;
        stream.cancel();
      });
      try {
        for await (const r of stream) {
          clock.received();
          clock.suspend(); // the caller's time with a result is not the server's
          yield r;
          clock.resume();
        }
      } catch (err) {
        if (failed) throw failed;
        if (clock.fired) throw new DeadlineExceededError(`no reply within ${replyMs} ms of a step being sent; the stream was cancelled`);
        throw err;
      } finally {
        done = true;
        clock.close();
        stream.cancel();
      }
      await feeding;
      if (failed) throw failed;
      return;
    }
    let call = null;
    try {
      for await (const x of inputs) {
        const seq = this.lastSequenceNumber + 1;
        const req = { step: this.request(x, { ...options, sequenceNumber: seq }) };
        const { value: reply, retries } = await withRetries(async (attemptMs, isRetry) => {
          call ??= new Lockstep(this, isRetry, options.signal);
          try {
            return await call.exchange(req, attemptMs);
          } catch (err) {
            call.close();
            call = null;
            throw err;
          }
        }, { policy: this.client.retry, timeoutMs: options.timeoutMs ?? this.client.timeoutMs, signal: options.signal });
        this.client.retries += retries;
        this.lastSequenceNumber = seq;
        yield this.result(reply);
      }
    } finally {
      call?.close();
    }
  }

  /** Streams every input; resolves to the results in order, rejects on the first error. */
  async streamAll(inputs, options = {}) {
    const results = [];
    for await (const r of this.steps(inputs, options)) results.push(r);
    if (results.length !== inputs.length) {
      throw new StatestreamError(grpc.status.UNKNOWN, `stream ended after ${results.length} of ${inputs.length} responses`);
    }
    return results;
  }

  /** {session_id, model, layers: [{layer, h, c}], step_count, last_sequence_number} */
  async getState(options = {}) {
    const { state } = await this.call("GetState", { session_id: this.id, raw_output: true }, options, true);
    return { ...state, layers: decodeStates(state.layers) };
  }

  /** Overwrites states (every layer) and, when given, the counters; takes what getState returned. */
  async setState({ layers, step_count, last_sequence_number }, options = {}) {
    const req = { session_id: this.id, layers: rawStates(layers) };
    if (step_count !== undefined) req.step_count = step_count;
    if (last_sequence_number !== undefined) req.last_sequence_number = last_sequence_number;
    const { state } = await this.call("SetState", req, options);
    this.lastSequenceNumber = state.last_sequence_number;
    return { ...state, layers: decodeStates(state.layers) };
  }

  /** Closes the session; resolves to its step count. */
  async close(options = {}) {
    return (await this.call("CloseSession", { session_id: this.id }, options)).step_count;
  }
}

/**
 * When a pipelined stream's reply is overdue: `timeoutMs` after the oldest unanswered step was sent (or after the
 * last reply, while steps are unanswered), not counting the caller's time with a result (suspend/resume); as the
 * Python client's ReplyDeadline. Calls `onOverdue` once.
 */
class ReplyClock {
  constructor(timeoutMs, onOverdue) {
    this.timeoutMs = timeoutMs;
    this.onOverdue = onOverdue;
    this.outstanding = 0;
    this.suspended = false;
    this.fired = false;
    this.timer = null;
  }

  sent() {
    this.outstanding += 1;
    if (this.outstanding === 1 && !this.suspended) this.rearm();
  }

  received() {
    this.outstanding = Math.max(0, this.outstanding - 1);
    this.rearm();
  }

  suspend() {
    this.suspended = true;
    this.rearm();
  }

  resume() {
    this.suspended = false;
    this.rearm();
  }

  rearm() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.outstanding && !this.suspended) {
      this.timer = setTimeout(() => {
        this.fired = true;
        this.onOverdue();
      }, this.timeoutMs);
    }
  }

  close() {
    clearTimeout(this.timer);
  }
}

/** One StreamSteps call carrying one step at a time: `exchange` sends a step and waits for its reply. */
class Lockstep {
  constructor(session, waitForReady, signal) {
    this.call = session.client.stub.StreamSteps(session.client.metadata(session.id, waitForReady));
    this.call.on("error", () => {}); // a broken call's error reaches `exchange` through the iterator
    this.replies = this.call[Symbol.asyncIterator]();
    this.removeAbort = onAbort(signal, () => this.call.cancel());
    this.signal = signal;
  }

  async exchange(req, timeoutMs) {
    let timer;
    const overdue = new Promise((_, reject) => {
      timer = setTimeout(() => {
        this.call.cancel();
        reject(new DeadlineExceededError(`no reply within ${timeoutMs} ms of a step being sent; the stream was cancelled`));
      }, timeoutMs);
    });
    try {
      this.call.write(req);
      const next = await Promise.race([this.replies.next(), overdue]);
      if (next.done) throw new UnavailableError("the server ended the stream before answering");
      if (next.value.error) throw errorFor(next.value.error.code, next.value.error.message);
      return next.value.step;
    } catch (err) {
      throw this.signal?.aborted ? abortError(this.signal) : StatestreamError.from(err);
    } finally {
      clearTimeout(timer);
    }
  }

  close() {
    this.removeAbort();
    this.call.cancel();
  }
}

/** A session group: N sessions stepped by one message; its calls carry the group id as x-session-id. */
export class Group {
  constructor(client, id, sessionIds, info) {
    this.client = client;
    this.id = id;
    this.sessionIds = sessionIds;
    this.info = info;
    this.sessions = sessionIds.map((sid) => new Session(client, sid, info));
  }

  /**
   * inputs[member]: that member's input (F numbers, T x F, or T*F; the same T for all). Members in `masked`
   * keep their states (their rows are zero); `sequenceNumber` (the group's last + 1) makes the step exactly-once.
   * Resolves to {outputs: [member][row][output_size], stepCount, replayed}.
   */
  async step(inputs, { masked = [], sequenceNumber, returnSequences = false, ...options } = {}) {
    const flats = inputs.map((x) => flatInput(x));
    const req = { group_id: this.id, inputs_raw: encodeFloats(flats.flat()), timesteps: (flats[0]?.length ?? 0) / this.info.features,
      masked, return_sequences: returnSequences, raw_output: true };
    if (sequenceNumber !== undefined) req.sequence_number = sequenceNumber;
    const reply = await this.client.call("StepGroup", req, { ...options, sessionId: this.id });
    return { outputs: split(floatsOf(reply.outputs, reply.outputs_raw), this.sessionIds.length, reply.rows, this.info.output_size),
      stepCount: reply.step_count, replayed: reply.replayed };
  }

  /** Closes the group and (unless keepSessions) its members; resolves to the group steps applied. */
  async close({ keepSessions = false, ...options } = {}) {
    return (await this.client.call("CloseGroup", { group_id: this.id, keep_sessions: keepSessions },
      { ...options, sessionId: this.id })).step_count;
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
        yield reply.error ? { error: errorFor(reply.error.code, reply.error.message) }
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
