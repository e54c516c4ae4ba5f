package statestream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	pb "github.com/statestream/statestream/client/go/statestreamv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exactly-once sessions (SessionOptions.ExactlyOnce, OpenOrAttach): the session numbers its steps
// (sequence number = last acknowledged + 1) and resends a step with the same number on a Retryable failure,
// with jittered backoff, until the call's deadline (ctx's, else the client's timeout per step). The server
// applies a number once and replays its recorded answer to a retry, so nothing is lost or applied twice
// through a failover. The same rules as the Python client.

// LastSequenceNumber is the last acknowledged step's sequence number (exactly-once sessions).
func (s *Session) LastSequenceNumber() int64 { return s.lastSeq }

// ExactlyOnce reports whether the session numbers and retries its steps.
func (s *Session) ExactlyOnce() bool { return s.exactlyOnce }

// stepBudget is the deadline of one exactly-once step with its retries when ctx has none.
func (s *Session) stepBudget() time.Duration {
	if s.client.timeout > 0 {
		return s.client.timeout
	}
	return DefaultTimeout
}

func (s *Session) stepExactlyOnce(ctx context.Context, input []float32, o StepOptions) (*Result, error) {
	if o.SequenceNumber != nil {
		return nil, status.Error(codes.InvalidArgument, "statestream: an exactly-once session numbers its steps itself; leave SequenceNumber nil")
	}
	seq := s.lastSeq + 1
	o.SequenceNumber = &seq
	req := s.request(input, o)
	var reply *pb.StepResponse
	retries, err := s.client.retry.attempts(ctx, s.stepBudget(), func(actx context.Context, retry bool) error {
		var err error
		reply, err = s.client.stub.Step(s.client.Context(WithSession(actx, s.ID)), req, grpc.WaitForReady(retry))
		return err
	})
	s.client.retries.Add(int64(retries))
	if err != nil {
		return nil, err
	}
	s.lastSeq = seq
	return s.result(reply)
}

// lockstep is one StreamSteps call carrying one step at a time.
type lockstep struct {
	call   pb.StateStreamService_StreamStepsClient
	cancel context.CancelFunc
}

func (s *Session) openLockstep(ctx context.Context, retry bool) (*lockstep, error) {
	sctx, cancel := context.WithCancel(s.client.Context(WithSession(ctx, s.ID)))
	call, err := s.client.stub.StreamSteps(sctx, grpc.WaitForReady(retry))
	if err != nil {
		cancel()
		return nil, err
	}
	return &lockstep{call: call, cancel: cancel}, nil
}

// exchange sends one step and waits for its reply within the attempt's context; an overdue reply cancels the call.
func (l *lockstep) exchange(actx context.Context, req *pb.StreamStepsRequest) (*pb.StepResponse, error) {
	type recv struct {
		r   *pb.StreamStepsResponse
		err error
	}
	done := make(chan recv, 1)
	go func() {
		if err := l.call.Send(req); err != nil && !errors.Is(err, io.EOF) {
			done <- recv{nil, err}
			return
		}
		r, err := l.call.Recv()
		done <- recv{r, err}
	}()
	select {
	case got := <-done:
		switch {
		case errors.Is(got.err, io.EOF):
			return nil, status.Error(codes.Unavailable, "statestream: the server ended the stream before answering")
		case got.err != nil:
			return nil, got.err
		case got.r.GetError() != nil:
			return nil, status.Error(codes.Code(got.r.GetError().GetCode()), got.r.GetError().GetMessage())
		}
		return got.r.GetStep(), nil
	case <-actx.Done():
		l.cancel()
		return nil, status.FromContextError(actx.Err()).Err()
	}
}

// Steps streams inputs over StreamSteps and yields one result per input, in order; iteration stops after the
// first error, which is yielded. An exactly-once session sends one step at a time and resumes a broken call on
// a new one from the last acknowledged step (each step with its retries bounded by ctx's deadline, else the
// client's timeout); any other session pipelines its steps (ctx bounds the whole stream).
func (s *Session) Steps(ctx context.Context, inputs iter.Seq[[]float32], o StepOptions) iter.Seq2[*Result, error] {
	if !s.exactlyOnce {
		return s.pipelined(ctx, inputs, o)
	}
	return func(yield func(*Result, error) bool) {
		var call *lockstep
		defer func() {
			if call != nil {
				call.cancel()
			}
		}()
		for x := range inputs {
			if o.SequenceNumber != nil {
				yield(nil, status.Error(codes.InvalidArgument, "statestream: an exactly-once session numbers its steps itself; leave SequenceNumber nil"))
				return
			}
			seq := s.lastSeq + 1
			so := o
			so.SequenceNumber = &seq
			req := &pb.StreamStepsRequest{Step: s.request(x, so)}
			var reply *pb.StepResponse
			retries, err := s.client.retry.attempts(ctx, s.stepBudget(), func(actx context.Context, retry bool) error {
				var err error
				if call == nil {
					if call, err = s.openLockstep(ctx, retry); err != nil {
						return err
					}
				}
				if reply, err = call.exchange(actx, req); err != nil {
					call.cancel()
					call = nil
				}
				return err
			})
			s.client.retries.Add(int64(retries))
			if err != nil {
				yield(nil, err)
				return
			}
			s.lastSeq = seq
			r, err := s.result(reply)
			if !yield(r, err) || err != nil {
				return
			}
		}
	}
}

// OpenOrAttach returns the named session: opened if it is not open, else attached (a restarted sensor picks up
// where it was). With o.ExactlyOnce the numbering resumes from the server's last sequence number. A session
// open on another model is refused with FAILED_PRECONDITION.
func (c *Client) OpenOrAttach(ctx context.Context, model, sessionID string, o SessionOptions) (*Session, error) {
	if sessionID == "" {
		return nil, status.Error(codes.InvalidArgument, "statestream: OpenOrAttach needs a session id")
	}
	o.SessionID = sessionID
	s, err := c.OpenSession(ctx, model, o)
	if !IsAlreadyExists(err) {
		return s, err
	}
	s, err = c.Attach(ctx, sessionID, model)
	if err != nil {
		return nil, err
	}
	st, err := s.GetState(ctx)
	if err != nil {
		return nil, err
	}
	if st.GetModel() != "" && st.GetModel() != model {
		return nil, status.Error(codes.FailedPrecondition, fmt.Sprintf("statestream: session %q is open on model %q, not %q", sessionID, st.GetModel(), model))
	}
	s.exactlyOnce, s.lastSeq = o.ExactlyOnce, st.GetLastSequenceNumber()
	return s, nil
}
