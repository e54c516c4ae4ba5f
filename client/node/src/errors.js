// The statestream error family: one class per gRPC status code, each with the numeric `code` (grpc.status)
// and the server's `details`; the in-band errors of a stream are the same classes.
import * as grpc from "@grpc/grpc-js";

/** A failed call: `code` is the gRPC status code (grpc.status.*), `details` the server's explanation. */
export class StatestreamError extends Error {
  constructor(code, details) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = "StatestreamError";
    this.code = code;
    this.details = details;
  }

  /** The error of the family for a gRPC error (or a {code, details} in-band error). */
  static from(err) {
    if (err instanceof StatestreamError) return err;
    return errorFor(err.code ?? grpc.status.UNKNOWN, err.details ?? err.message);
  }
}

function family(name, code) {
  const cls = class extends StatestreamError {
    constructor(details, c = code) {
      super(c, details);
      this.name = name;
    }
  };
  Object.defineProperty(cls, "name", { value: name });
  return cls;
}

/** Wrong input size, NaN/Inf, a bad field. */
export const InvalidArgumentError = family("InvalidArgumentError", grpc.status.INVALID_ARGUMENT);
/** Unknown model, unknown or expired session. */
export const NotFoundError = family("NotFoundError", grpc.status.NOT_FOUND);
/** A session id that is already open. */
export const AlreadyExistsError = family("AlreadyExistsError", grpc.status.ALREADY_EXISTS);
/** A sequence number gap or a stale one. */
export const FailedPreconditionError = family("FailedPreconditionError", grpc.status.FAILED_PRECONDITION);
/** A session, queue or size limit was reached. */
export const ResourceExhaustedError = family("ResourceExhaustedError", grpc.status.RESOURCE_EXHAUSTED);
/** The server is draining or loading, or cannot be reached. */
export const UnavailableError = family("UnavailableError", grpc.status.UNAVAILABLE);
/** A missing or wrong bearer token. */
export const UnauthenticatedError = family("UnauthenticatedError", grpc.status.UNAUTHENTICATED);
/** The call's deadline passed. */
export const DeadlineExceededError = family("DeadlineExceededError", grpc.status.DEADLINE_EXCEEDED);
/** The call was cancelled (by a proxy, a broken connection, or the caller's AbortSignal). */
export const CancelledError = family("CancelledError", grpc.status.CANCELLED);
/** A runtime failure. */
export const InternalError = family("InternalError", grpc.status.INTERNAL);

const BY_CODE = new Map([InvalidArgumentError, NotFoundError, AlreadyExistsError, FailedPreconditionError,
  ResourceExhaustedError, UnavailableError, UnauthenticatedError, DeadlineExceededError, CancelledError,
  InternalError].map((cls) => [new cls("").code, cls]));

/** The family's error for a status code. */
export function errorFor(code, details) {
  const cls = BY_CODE.get(code);
  return cls ? new cls(details) : new StatestreamError(code, details);
}
