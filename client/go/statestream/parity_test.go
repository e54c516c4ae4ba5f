package statestream_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/statestream/statestream/client/go/internal/livetest"
	"github.com/statestream/statestream/client/go/statestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// reference steps inputs through a plain session, one unary step each: what every other path must equal.
func reference(t *testing.T, c *statestream.Client, ctx context.Context, inputs [][]float32) [][]float32 {
	t.Helper()
	s := open(t, c, ctx)
	out := make([][]float32, len(inputs))
	for i, x := range inputs {
		r, err := s.Step(ctx, x, statestream.StepOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r.Last()
	}
	return out
}

func TestOpenOrAttachResumesTheNumbering(t *testing.T) {
	c, ctx := dial(t)
	inputs := ramp(9, 3)
	want := reference(t, c, ctx, inputs)
	id := fmt.Sprintf("go-ooa-%d", time.Now().UnixNano())
	s, err := c.OpenOrAttach(ctx, livetest.Model(), id, statestream.SessionOptions{ExactlyOnce: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	var got [][]float32
	for _, x := range inputs[:4] {
		r, err := s.Step(ctx, x, statestream.StepOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Last())
	}
	c2, _ := dial(t) // a restarted sensor: same name, a new process
	s2, err := c2.OpenOrAttach(ctx, livetest.Model(), id, statestream.SessionOptions{ExactlyOnce: true})
	if err != nil {
		t.Fatal(err)
	}
	if s2.LastSequenceNumber() != 4 || !s2.ExactlyOnce() {
		t.Fatalf("attached at sequence %d (exactly-once %v), want 4", s2.LastSequenceNumber(), s2.ExactlyOnce())
	}
	rs, err := s2.StreamAll(ctx, inputs[4:], statestream.StepOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		got = append(got, r.Last())
	}
	for i := range want {
		sameBits(t, fmt.Sprintf("step %d", i), got[i], want[i])
	}
	st, err := s2.GetState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStepCount() != 9 || st.GetLastSequenceNumber() != 9 {
		t.Fatalf("step count %d, last sequence %d; want 9 and 9", st.GetStepCount(), st.GetLastSequenceNumber())
	}
	if _, err := s2.Step(ctx, inputs[0], statestream.StepOptions{SequenceNumber: new(int64)}); !statestream.IsInvalidArgument(err) {
		t.Fatalf("an exactly-once step with a caller's number: %v, want INVALID_ARGUMENT", err)
	}
	if _, err := c.OpenOrAttach(ctx, "no-such-model", id+"-x", statestream.SessionOptions{}); !statestream.IsNotFound(err) {
		t.Fatalf("unknown model: %v, want NOT_FOUND", err)
	}
}

func TestGroupStepWithMask(t *testing.T) {
	c, ctx := dial(t)
	inputs := ramp(2, 3)
	want := reference(t, c, ctx, inputs)
	g, err := c.OpenGroup(ctx, livetest.Model(), statestream.GroupOptions{Size: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background(), false) })
	// member 1 misses the first tick: it is then one step behind the others
	r, err := g.Step(ctx, [][]float32{inputs[0], inputs[0], inputs[0]}, statestream.GroupStepOptions{Masked: []uint32{1}})
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "member 0", r.Outputs[0][0], want[0])
	sameBits(t, "masked member", r.Outputs[1][0], make([]float32, len(want[0])))
	seq := int64(1)
	r2, err := g.Step(ctx, [][]float32{inputs[1], inputs[0], inputs[1]}, statestream.GroupStepOptions{SequenceNumber: &seq})
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "member 2", r2.Outputs[2][0], want[1])
	sameBits(t, "member 1 (first step)", r2.Outputs[1][0], want[0])
	again, err := g.Step(ctx, [][]float32{inputs[1], inputs[0], inputs[1]}, statestream.GroupStepOptions{SequenceNumber: &seq})
	if err != nil || !again.Replayed {
		t.Fatalf("a repeated group sequence number: replayed %v, err %v", again != nil && again.Replayed, err)
	}
	st, err := g.Sessions()[1].GetState(ctx)
	if err != nil || st.GetStepCount() != 1 {
		t.Fatalf("member 1 as a session: %v steps, err %v", st.GetStepCount(), err)
	}
	if _, err := g.Step(ctx, [][]float32{inputs[0]}, statestream.GroupStepOptions{}); !statestream.IsInvalidArgument(err) {
		t.Fatalf("one input for three members: %v, want INVALID_ARGUMENT", err)
	}
}

func TestStepFrameOpensMissingSessionsAndReportsEntryErrors(t *testing.T) {
	c, ctx := dial(t)
	inputs := ramp(1, 3)
	want := reference(t, c, ctx, inputs)
	ids := []string{fmt.Sprintf("go-frame-a-%d", time.Now().UnixNano()), fmt.Sprintf("go-frame-b-%d", time.Now().UnixNano())}
	nan := []float32{float32(0), float32(0), float32(math.NaN())}
	r, err := c.StepFrame(ctx, livetest.Model(), ids, [][]float32{inputs[0], nan}, statestream.FrameOptions{OpenIfMissing: true})
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "entry 0", r.Outputs[0][0], want[0])
	if !statestream.IsInvalidArgument(r.Errors[1]) || r.Outputs[1] != nil || len(r.Errors) != 1 {
		t.Fatalf("entry 1 (NaN): errors %v", r.Errors)
	}
	for _, id := range ids {
		s, err := c.Attach(ctx, id, livetest.Model())
		if err == nil {
			s.Close(ctx)
		}
	}
}

func TestErrorHelpersAndTheRetryRule(t *testing.T) {
	c, ctx := dial(t)
	s, err := c.Attach(ctx, "go-no-such-session", livetest.Model())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Step(ctx, []float32{0, 0, 0}, statestream.StepOptions{}); !statestream.IsNotFound(err) || statestream.Code(err) != codes.NotFound {
		t.Fatalf("step of an unknown session: %v, want NOT_FOUND", err)
	}
	id := fmt.Sprintf("go-dup-%d", time.Now().UnixNano())
	open(t, c, ctx, statestream.SessionOptions{SessionID: id})
	if _, err := c.OpenSession(ctx, livetest.Model(), statestream.SessionOptions{SessionID: id}); !statestream.IsAlreadyExists(err) {
		t.Fatalf("second open: %v, want ALREADY_EXISTS", err)
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "connection refused"), true},
		{status.Error(codes.Canceled, "stream reset"), true},
		{status.Error(codes.Internal, "RST_STREAM with error code 2"), true},
		{status.Error(codes.Internal, "the model run failed; nothing was applied"), false},
		{status.Error(codes.DeadlineExceeded, "attempt timed out"), true},
		{status.Error(codes.FailedPrecondition, "expected sequence number 3"), false},
		{context.Canceled, false},
	} {
		if got := statestream.Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A sensor's inputs never end: Steps yields each result as it comes, for a pipelined and an exactly-once session.
func TestStepsOverAnEndlessSensorYieldAsTheyGo(t *testing.T) {
	c, ctx := dial(t)
	for _, exactlyOnce := range []bool{false, true} {
		s := open(t, c, ctx, statestream.SessionOptions{ExactlyOnce: exactlyOnce, SessionID: fmt.Sprintf("go-endless-%v-%d", exactlyOnce, time.Now().UnixNano())})
		endless := func(yield func([]float32) bool) {
			for i := 0; ; i++ {
				if !yield([]float32{float32(i % 7), 0, 1}) {
					return
				}
			}
		}
		n := 0
		for r, err := range s.Steps(ctx, endless, statestream.StepOptions{}) {
			if err != nil {
				t.Fatal(err)
			}
			if n++; uint64(n) != r.StepCount && exactlyOnce {
				t.Fatalf("result %d has step count %d", n, r.StepCount)
			}
			if n == 5 {
				break
			}
		}
		if n != 5 {
			t.Fatalf("exactly-once %v: %d results", exactlyOnce, n)
		}
	}
}

// The reply deadline bounds each reply, not the stream, and not the caller's own time with a result.
func TestPipelinedStreamOutlastsTheTimeoutAndASlowCallerIsNotAHungServer(t *testing.T) {
	c, ctx := dial(t, statestream.WithTimeout(300*time.Millisecond))
	s := open(t, c, ctx)
	paced := func(yield func([]float32) bool) {
		for i := 0; i < 40; i++ {
			time.Sleep(25 * time.Millisecond) // 1 s in all: longer than the timeout
			if !yield([]float32{0.1, 0.2, 0.3}) {
				return
			}
		}
	}
	n := 0
	for _, err := range s.Steps(ctx, paced, statestream.StepOptions{}) {
		if err != nil {
			t.Fatalf("after %d replies: %v", n, err)
		}
		n++
	}
	held := 0
	for _, err := range s.Steps(ctx, slices.Values(ramp(3, 3)), statestream.StepOptions{}) {
		if err != nil {
			t.Fatalf("a caller holding results: %v", err)
		}
		time.Sleep(400 * time.Millisecond) // longer than the timeout, with a result in hand
		held++
	}
	if n != 40 || held != 3 {
		t.Fatalf("%d and %d results, want 40 and 3", n, held)
	}
}
