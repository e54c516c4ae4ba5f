// When an exactly-once step may be sent again, and how long to wait in between: the Python client's rules
// (client/statestream/client/retry.py), bounded by the call's deadline.
import * as grpc from "@grpc/grpc-js";

import { DeadlineExceededError, StatestreamError } from "./errors.js";

/** Every INTERNAL our own server raises says so: a deterministic failure that a retry would repeat. */
export const SERVER_INTERNAL_MARK = "nothing was applied";

/** Exponential backoff with jitter; attemptTimeoutMs 0 gives one attempt a third of the call's deadline. */
export const DEFAULT_RETRY = Object.freeze({ initialBackoffMs: 50, maxBackoffMs: 1000, multiplier: 2, attemptTimeoutMs: 0 });

/**
 * True when sending the same sequence number again is both safe and useful: UNAVAILABLE, CANCELLED (a proxy
 * or a broken connection reset the call; not the caller's own abort), INTERNAL unless our server raised it,
 * DEADLINE_EXCEEDED of one attempt.
 */
export function retryable(err) {
  if (err.aborted) return false;
  switch (err.code) {
    case grpc.status.UNAVAILABLE:
    case grpc.status.CANCELLED:
    case grpc.status.DEADLINE_EXCEEDED:
      return true;
    case grpc.status.INTERNAL:
      return !String(err.details ?? "").includes(SERVER_INTERNAL_MARK);
    default:
      return false;
  }
}

/** Milliseconds before retry number `n` (1, 2, ...): half to all of the capped exponential. */
export function backoffMs(policy, n, rand = Math.random) {
  const cap = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** (n - 1));
  return cap * (0.5 + 0.5 * rand());
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/**
 * Runs `attempt(attemptTimeoutMs, isRetry)` until it resolves, rejects with an error that is not retryable, or
 * the next attempt would start past `timeoutMs`. Resolves to {value, retries}.
 */
export async function withRetries(attempt, { policy = DEFAULT_RETRY, timeoutMs, signal } = {}) {
  const deadline = Date.now() + timeoutMs;
  const perAttempt = policy.attemptTimeoutMs || timeoutMs / 3;
  let last;
  for (let retries = 0; ; retries++) {
    const left = deadline - Date.now();
    if (left <= 0) throw expired(last, retries, timeoutMs);
    try {
      return { value: await attempt(Math.min(perAttempt, left), retries > 0), retries };
    } catch (e) {
      if (!(e instanceof StatestreamError) && typeof e?.code !== "number") throw e; // not a call's failure
      const err = StatestreamError.from(e);
      last = err;
      err.attempts = retries + 1;
      if (signal?.aborted || !retryable(err) || deadline - Date.now() <= 0) throw err;
    }
    const pause = backoffMs(policy, retries + 1);
    if (pause >= deadline - Date.now()) throw expired(last, retries + 1, timeoutMs);
    await sleep(pause, signal);
  }
}

function expired(last, retries, timeoutMs) {
  if (!last) return new DeadlineExceededError(`no attempt possible within ${timeoutMs} ms`);
  last.details = `${last.details} (gave up after ${retries} attempts in ${timeoutMs} ms)`;
  last.message = `${grpc.status[last.code]}: ${last.details}`;
  return last;
}
