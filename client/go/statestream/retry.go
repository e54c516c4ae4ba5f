package statestream

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy is the backoff of exactly-once calls: exponential with jitter, each attempt bounded.
type RetryPolicy struct {
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	// AttemptTimeout bounds one attempt; 0 gives an attempt a third of the call's deadline, so a hung
	// connection is given up in time for two more tries.
	AttemptTimeout time.Duration
}

// DefaultRetryPolicy is the Python client's default: 50 ms doubling to 1 s.
var DefaultRetryPolicy = RetryPolicy{InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}

// Backoff is the pause before retry number n (1, 2, ...): half to all of the capped exponential.
func (p RetryPolicy) Backoff(n int) time.Duration {
	cap := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(n-1)))
	return time.Duration(cap * (0.5 + 0.5*rand.Float64()))
}

// attempts runs fn until it succeeds, fails with an error that is not Retryable, or the call's deadline (ctx's,
// else total) leaves no time for the next attempt. fn gets each attempt's context and whether it is a retry.
// Returns the number of retries made.
func (p RetryPolicy) attempts(ctx context.Context, total time.Duration, fn func(ctx context.Context, retry bool) error) (int, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(total)
	} else {
		total = time.Until(deadline)
	}
	perAttempt := p.AttemptTimeout
	if perAttempt <= 0 {
		perAttempt = total / 3
	}
	var last error
	for retries := 0; ; retries++ {
		left := time.Until(deadline)
		if left <= 0 {
			return retries, expired(last, retries, total)
		}
		actx, cancel := context.WithTimeout(ctx, min(perAttempt, left))
		err := fn(actx, retries > 0)
		cancel()
		if err == nil {
			return retries, nil
		}
		last = err
		if ctx.Err() != nil || !Retryable(err) {
			return retries, err
		}
		pause := p.Backoff(retries + 1)
		if pause >= time.Until(deadline) {
			return retries, expired(last, retries+1, total)
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return retries, err
		}
	}
}

func expired(last error, retries int, total time.Duration) error {
	if last == nil {
		return status.Errorf(codes.DeadlineExceeded, "no attempt possible within %v", total)
	}
	st := status.Convert(last)
	return status.Error(st.Code(), fmt.Sprintf("%s (gave up after %d attempts in %v)", st.Message(), retries, total))
}
