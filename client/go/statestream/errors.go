package statestream

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors are gRPC status errors: status.Code(err) and status.Convert(err).Message() read them, also for the
// in-band errors of a stream. The helpers below name the codes the server uses (see the README's status table).

// Code is err's gRPC status code (codes.OK for nil, codes.Unknown for an error that carries none).
func Code(err error) codes.Code { return status.Code(err) }

// IsInvalidArgument: wrong input size, NaN/Inf, a bad field.
func IsInvalidArgument(err error) bool { return Code(err) == codes.InvalidArgument }

// IsNotFound: an unknown model, an unknown or expired session.
func IsNotFound(err error) bool { return Code(err) == codes.NotFound }

// IsAlreadyExists: a session id that is already open.
func IsAlreadyExists(err error) bool { return Code(err) == codes.AlreadyExists }

// IsFailedPrecondition: a sequence number gap or a stale one.
func IsFailedPrecondition(err error) bool { return Code(err) == codes.FailedPrecondition }

// IsResourceExhausted: a session, queue or size limit was reached.
func IsResourceExhausted(err error) bool { return Code(err) == codes.ResourceExhausted }

// IsUnavailable: the server is draining, loading or cannot be reached.
func IsUnavailable(err error) bool { return Code(err) == codes.Unavailable }

// IsDeadlineExceeded: the call's deadline passed.
func IsDeadlineExceeded(err error) bool { return Code(err) == codes.DeadlineExceeded }

// IsUnauthenticated: a missing or wrong bearer token.
func IsUnauthenticated(err error) bool { return Code(err) == codes.Unauthenticated }

// ServerInternalMark ends the message of every INTERNAL our own server raises: a deterministic failure that a
// retry would repeat. Any other INTERNAL comes from a proxy or the transport, where the step may or may not
// have been applied: a retry with the same sequence number finds out.
const ServerInternalMark = "nothing was applied"

// Retryable reports whether sending the same sequence number again is both safe and useful: UNAVAILABLE,
// CANCELLED (a proxy or a broken connection reset the call), INTERNAL unless our server raised it, and
// DEADLINE_EXCEEDED of one attempt. The same rule as the Python client's retry.retryable.
func Retryable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false // the caller's own cancellation
	}
	st := status.Convert(err)
	switch st.Code() {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
		return true
	case codes.Internal:
		return !strings.Contains(st.Message(), ServerInternalMark)
	}
	return false
}
