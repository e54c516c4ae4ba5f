package statestream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"

	pb "github.com/statestream/statestream/client/go/statestreamv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Session is one server-side session: its recurrent states stay on the server between calls.
// Every call it makes carries the x-session-id header (SessionHeader).
type Session struct {
	ID     string
	Model  *pb.ModelInfo
	client *Client

	exactlyOnce   bool
	lastSeq       int64  // the last acknowledged sequence number (exactly-once)
	attachedSteps uint64 // the step count read when attached
}

// StepOptions are Keras's per-call choices, plus exactly-once sequence numbers.
type StepOptions struct {
	// ReturnSequences: the output of every timestep of the request, else only the last.
	ReturnSequences bool
	// ReturnState: the states of every layer after the last timestep.
	ReturnState bool
	// SequenceNumber, when not nil, must be the session's last sequence number + 1;
	// a repeat of the last one returns the recorded response without stepping again.
	SequenceNumber *int64
}

// Result is the answer to one step request.
type Result struct {
	// Output has one row per returned timestep (T with ReturnSequences, else 1), OutputSize values each.
	Output [][]float32
	// States after the last timestep, by layer name (only with ReturnState).
	States map[string]*pb.LayerState
	// StepCount is the session's timesteps so far, this request included.
	StepCount uint64
	// Replayed is true when this is the recorded response of an already applied sequence number.
	Replayed bool
	// Raw is the response as received.
	Raw *pb.StepResponse
}

// Last is the output of the last timestep.
func (r *Result) Last() []float32 {
	if len(r.Output) == 0 {
		return nil
	}
	return r.Output[len(r.Output)-1]
}

func (s *Session) request(input []float32, o StepOptions) *pb.StepRequest {
	return &pb.StepRequest{SessionId: s.ID, InputRaw: EncodeFloats(input), RawOutput: true,
		ReturnSequences: o.ReturnSequences, ReturnState: o.ReturnState, SequenceNumber: o.SequenceNumber}
}

func (s *Session) result(r *pb.StepResponse) (*Result, error) {
	width := int(s.Model.GetOutputSize())
	res := &Result{StepCount: r.GetStepCount(), Replayed: r.GetReplayed(), Raw: r}
	out, err := floatsOf(r.GetOutput(), r.GetOutputRaw())
	if err != nil {
		return nil, err
	}
	if err := decodeStates(r.GetStates()); err != nil {
		return nil, err
	}
	for i := 0; width > 0 && i+width <= len(out); i += width {
		res.Output = append(res.Output, out[i:i+width])
	}
	if len(r.GetStates()) > 0 {
		res.States = make(map[string]*pb.LayerState, len(r.GetStates()))
		for _, l := range r.GetStates() {
			res.States[l.GetLayer()] = l
		}
	}
	return res, nil
}

// Step applies input (T x features values, row-major, T >= 1) to the session.
// An exactly-once session numbers the step itself (leave SequenceNumber nil) and retries it.
func (s *Session) Step(ctx context.Context, input []float32, o StepOptions) (*Result, error) {
	if s.exactlyOnce {
		return s.stepExactlyOnce(ctx, input, o)
	}
	ctx, cancel := s.client.unary(WithSession(ctx, s.ID))
	defer cancel()
	r, err := s.client.stub.Step(ctx, s.request(input, o))
	if err != nil {
		return nil, err
	}
	return s.result(r)
}

// GetState reads the session's states of every layer, its step count and last sequence number (retried like a
// step for an exactly-once session: a read is safe to repeat).
func (s *Session) GetState(ctx context.Context) (*pb.SessionState, error) {
	var r *pb.GetStateResponse
	get := func(ctx context.Context, retry bool) error {
		ctx, cancel := s.client.unary(WithSession(ctx, s.ID))
		defer cancel()
		var err error
		r, err = s.client.stub.GetState(ctx, &pb.GetStateRequest{SessionId: s.ID, RawOutput: true}, grpc.WaitForReady(retry))
		return err
	}
	var err error
	if s.exactlyOnce {
		var retries int
		retries, err = s.client.retry.attempts(ctx, s.stepBudget(), get)
		s.client.retries.Add(int64(retries))
	} else {
		err = get(ctx, false)
	}
	if err != nil {
		return nil, err
	}
	return r.GetState(), decodeStates(r.GetState().GetLayers())
}

// SetState overwrites the session's states (every layer) and its counters: restore, migrate, warm start.
func (s *Session) SetState(ctx context.Context, st *pb.SessionState) (*pb.SessionState, error) {
	ctx, cancel := s.client.unary(WithSession(ctx, s.ID))
	defer cancel()
	steps, seq := st.GetStepCount(), st.GetLastSequenceNumber()
	r, err := s.client.stub.SetState(ctx, &pb.SetStateRequest{SessionId: s.ID, Layers: rawStates(st.GetLayers()),
		StepCount: &steps, LastSequenceNumber: &seq})
	if err != nil {
		return nil, err
	}
	s.lastSeq = r.GetState().GetLastSequenceNumber()
	return r.GetState(), decodeStates(r.GetState().GetLayers())
}

// Close closes the session on the server; returns its step count.
func (s *Session) Close(ctx context.Context) (uint64, error) {
	ctx, cancel := s.client.unary(WithSession(ctx, s.ID))
	defer cancel()
	r, err := s.client.stub.CloseSession(ctx, &pb.CloseSessionRequest{SessionId: s.ID})
	if err != nil {
		return 0, err
	}
	return r.GetStepCount(), nil
}

// Stream is one StreamSteps call for a session: Send requests, Recv one Result per request, in order.
type Stream struct {
	s    *Session
	call pb.StateStreamService_StreamStepsClient
}

// Stream opens a bidirectional stream; ctx bounds the whole stream (no default deadline).
func (s *Session) Stream(ctx context.Context) (*Stream, error) {
	call, err := s.client.stub.StreamSteps(s.client.Context(WithSession(ctx, s.ID)))
	if err != nil {
		return nil, err
	}
	return &Stream{s: s, call: call}, nil
}

// Send queues one step request on the stream.
func (st *Stream) Send(input []float32, o StepOptions) error {
	return st.call.Send(&pb.StreamStepsRequest{Step: st.s.request(input, o)})
}

// CloseSend tells the server no more requests follow; Recv then ends with io.EOF.
func (st *Stream) CloseSend() error { return st.call.CloseSend() }

// Recv returns the next result. An in-band error (the stream stays open) comes back as a
// status error for that one request; io.EOF after the last response.
func (st *Stream) Recv() (*Result, error) {
	r, err := st.call.Recv()
	if err != nil {
		return nil, err
	}
	if e := r.GetError(); e != nil {
		return nil, status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	return st.s.result(r.GetStep())
}

// StreamAll streams every input (see Steps) and returns the results in order. It stops at the first error,
// in-band or not. An exactly-once session resumes a broken stream from its last acknowledged step.
func (s *Session) StreamAll(ctx context.Context, inputs [][]float32, o StepOptions) ([]*Result, error) {
	results := make([]*Result, 0, len(inputs))
	for r, err := range s.Steps(ctx, slices.Values(inputs), o) {
		if err != nil {
			return results, err
		}
		results = append(results, r)
	}
	if len(results) != len(inputs) {
		return results, fmt.Errorf("statestream: stream ended after %d of %d responses", len(results), len(inputs))
	}
	return results, nil
}

// pipelined sends every input over one StreamSteps call as the iterator produces it, while yielding the
// replies in order; each reply is due within the client's timeout of its step (DEADLINE_EXCEEDED), not counting
// the caller's time with a result; ctx bounds the whole call.
func (s *Session) pipelined(ctx context.Context, inputs iter.Seq[[]float32], o StepOptions) iter.Seq2[*Result, error] {
	return func(yield func(*Result, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.Stream(ctx)
		if err != nil {
			yield(nil, err)
			return
		}
		clock := newReplyClock(s.client.timeout, cancel)
		defer clock.stop()
		sendErr := make(chan error, 1)
		go func() {
			for x := range inputs {
				clock.sent()
				if err := st.Send(x, o); err != nil {
					sendErr <- err // io.EOF: the stream ended; Recv reports why
					return
				}
			}
			sendErr <- st.CloseSend()
		}()
		for {
			r, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if clock.overdue() {
					err = status.Errorf(codes.DeadlineExceeded, "statestream: no reply within %v of a step being sent; the stream was cancelled", s.client.timeout)
				}
				yield(nil, err)
				return
			}
			clock.received()
			clock.suspend() // the caller's time with a result is not the server's
			if !yield(r, nil) {
				return
			}
			clock.resume()
		}
		if err := <-sendErr; err != nil && !errors.Is(err, io.EOF) {
			yield(nil, err)
		}
	}
}
