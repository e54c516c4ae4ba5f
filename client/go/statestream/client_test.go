package statestream_test

import (
	"context"
	"io"
	"math"
	"os"
	"testing"
	"time"

	"github.com/statestream/statestream/client/go/internal/livetest"
	"github.com/statestream/statestream/client/go/statestream"
	pb "github.com/statestream/statestream/client/go/statestreamv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func dial(t *testing.T, opts ...statestream.Option) (*statestream.Client, context.Context) {
	t.Helper()
	target := livetest.Target(t)
	if tok := os.Getenv("STATESTREAM_TOKEN"); tok != "" && len(opts) == 0 {
		opts = append(opts, statestream.WithToken(tok))
	}
	c, err := statestream.Dial(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c, ctx
}

func open(t *testing.T, c *statestream.Client, ctx context.Context, opts ...statestream.SessionOptions) *statestream.Session {
	t.Helper()
	s, err := c.OpenSession(ctx, livetest.Model(), opts...)
	if err != nil {
		t.Fatalf("OpenSession: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// ramp is T timesteps of deterministic inputs for a model with `features` inputs.
func ramp(steps, features int) [][]float32 {
	xs := make([][]float32, steps)
	for t := range xs {
		xs[t] = make([]float32, features)
		for j := range xs[t] {
			xs[t][j] = float32(t+1)/float32(steps) - float32(j)/4
		}
	}
	return xs
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s[%d] = %v, want %v (bit-exact)", what, i, got[i], want[i])
		}
	}
}

func sameStates(t *testing.T, got, want []*pb.LayerState) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d layers, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].GetLayer() != want[i].GetLayer() {
			t.Fatalf("layer %d is %q, want %q", i, got[i].GetLayer(), want[i].GetLayer())
		}
		sameBits(t, got[i].GetLayer()+".h", got[i].GetH(), want[i].GetH())
		sameBits(t, got[i].GetLayer()+".c", got[i].GetC(), want[i].GetC())
	}
}

func TestModels(t *testing.T) {
	c, ctx := dial(t)
	models, err := c.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range models {
		found = found || m.GetName() == livetest.Model()
	}
	if !found {
		t.Fatalf("model %q not in ListModels: %v", livetest.Model(), models)
	}
	m, err := c.Model(ctx, livetest.Model())
	if err != nil {
		t.Fatal(err)
	}
	if m.GetFeatures() == 0 || m.GetOutputSize() == 0 || len(m.GetLayers()) == 0 {
		t.Fatalf("incomplete model info: %v", m)
	}
	for _, l := range m.GetLayers() {
		if l.GetUnits() == 0 || len(l.GetStateNames()) == 0 {
			t.Fatalf("incomplete layer info: %v", l)
		}
	}
	if _, err := c.Model(ctx, "no-such-model"); status.Code(err) != codes.NotFound {
		t.Fatalf("GetModel(no-such-model): %v, want NOT_FOUND", err)
	}
}

// Unary steps, the stream and one multi-timestep request walk the same states.
func TestStepStreamAndSequences(t *testing.T) {
	c, ctx := dial(t)
	unary, streamed, whole := open(t, c, ctx), open(t, c, ctx), open(t, c, ctx)
	features := int(unary.Model.GetFeatures())
	inputs := ramp(12, features)

	var outputs [][]float32
	for i, x := range inputs {
		r, err := unary.Step(ctx, x, statestream.StepOptions{ReturnState: i == len(inputs)-1})
		if err != nil {
			t.Fatalf("Step %d: %v", i, err)
		}
		if r.StepCount != uint64(i+1) || len(r.Output) != 1 || len(r.Last()) != int(unary.Model.GetOutputSize()) {
			t.Fatalf("Step %d: step_count %d, output %v", i, r.StepCount, r.Output)
		}
		outputs = append(outputs, r.Last())
	}

	results, err := streamed.StreamAll(ctx, inputs, statestream.StepOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(inputs) {
		t.Fatalf("%d stream results for %d inputs", len(results), len(inputs))
	}
	for i, r := range results {
		sameBits(t, "stream output", r.Last(), outputs[i])
	}
	a, err := unary.GetState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := streamed.GetState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameStates(t, b.GetLayers(), a.GetLayers())
	if a.GetStepCount() != uint64(len(inputs)) || b.GetStepCount() != uint64(len(inputs)) {
		t.Fatalf("step counts %d and %d, want %d", a.GetStepCount(), b.GetStepCount(), len(inputs))
	}

	// All timesteps in one request with return_sequences: the same rows (one ORT run over T steps).
	var flat []float32
	for _, x := range inputs {
		flat = append(flat, x...)
	}
	r, err := whole.Step(ctx, flat, statestream.StepOptions{ReturnSequences: true, ReturnState: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Output) != len(inputs) || r.StepCount != uint64(len(inputs)) {
		t.Fatalf("return_sequences: %d rows, step_count %d", len(r.Output), r.StepCount)
	}
	for i := range inputs {
		for j, v := range r.Output[i] {
			if d := math.Abs(float64(v - outputs[i][j])); d > 1e-5 {
				t.Fatalf("row %d col %d: %v vs %v", i, j, v, outputs[i][j])
			}
		}
	}
	if len(r.States) != len(unary.Model.GetLayers()) {
		t.Fatalf("return_state gave %d layers, want %d", len(r.States), len(unary.Model.GetLayers()))
	}
}

func TestSetStateContinuesBitExactly(t *testing.T) {
	c, ctx := dial(t)
	a := open(t, c, ctx)
	inputs := ramp(6, int(a.Model.GetFeatures()))
	for _, x := range inputs[:3] {
		if _, err := a.Step(ctx, x, statestream.StepOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	saved, err := a.GetState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := open(t, c, ctx)
	restored, err := b.SetState(ctx, saved)
	if err != nil {
		t.Fatal(err)
	}
	if restored.GetStepCount() != 3 {
		t.Fatalf("restored step_count %d, want 3", restored.GetStepCount())
	}
	for _, x := range inputs[3:] {
		ra, err := a.Step(ctx, x, statestream.StepOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rb, err := b.Step(ctx, x, statestream.StepOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sameBits(t, "continued output", rb.Last(), ra.Last())
	}
	// A session opened from saved states starts where the saved one was.
	cs := open(t, c, ctx, statestream.SessionOptions{InitialStates: saved.GetLayers()})
	st, err := cs.GetState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameStates(t, st.GetLayers(), saved.GetLayers())
}

func TestExactlyOnce(t *testing.T) {
	c, ctx := dial(t)
	s := open(t, c, ctx)
	x := ramp(1, int(s.Model.GetFeatures()))[0]
	seq := func(n int64) statestream.StepOptions { return statestream.StepOptions{SequenceNumber: &n} }
	first, err := s.Step(ctx, x, seq(1))
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Step(ctx, x, seq(1))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || again.StepCount != 1 {
		t.Fatalf("retry of sequence 1: replayed=%v step_count=%d", again.Replayed, again.StepCount)
	}
	sameBits(t, "replayed output", again.Last(), first.Last())
	_, err = s.Step(ctx, x, seq(5))
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("gap: %v, want FAILED_PRECONDITION", err)
	}
}

func TestStreamKeepsGoingAfterInBandError(t *testing.T) {
	c, ctx := dial(t)
	s := open(t, c, ctx)
	x := ramp(1, int(s.Model.GetFeatures()))[0]
	st, err := s.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]float32{x, x[:1], x} {
		if err := st.Send(in, statestream.StepOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.StepCount != 1 {
		t.Fatalf("first: %v %v", r, err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad input: %v, want INVALID_ARGUMENT in-band", err)
	}
	if r, err := st.Recv(); err != nil || r.StepCount != 2 {
		t.Fatalf("after the error: %v %v", r, err)
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v, want io.EOF", err)
	}
}

func TestErrors(t *testing.T) {
	c, ctx := dial(t)
	s := open(t, c, ctx)
	if _, err := c.OpenSession(ctx, livetest.Model(), statestream.SessionOptions{SessionID: s.ID}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("reopen: %v, want ALREADY_EXISTS", err)
	}
	if _, err := s.Step(ctx, []float32{1}, statestream.StepOptions{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("short input: %v, want INVALID_ARGUMENT", err)
	}
	if _, err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetState(ctx); status.Code(err) != codes.NotFound {
		t.Fatalf("closed session: %v, want NOT_FOUND", err)
	}
}

// With STATESTREAM_TOKEN (a server started with --auth-token-file) the token opens the door and
// its absence gets UNAUTHENTICATED.
func TestToken(t *testing.T) {
	token := os.Getenv("STATESTREAM_TOKEN")
	if token == "" {
		t.Skip("STATESTREAM_TOKEN not set: the server runs without auth")
	}
	c, ctx := dial(t, statestream.WithToken(token))
	s := open(t, c, ctx)
	if _, err := s.Step(ctx, ramp(1, int(s.Model.GetFeatures()))[0], statestream.StepOptions{}); err != nil {
		t.Fatal(err)
	}
	anon, ctx2 := dial(t, statestream.WithTimeout(5*time.Second))
	if _, err := anon.Models(ctx2); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v, want UNAUTHENTICATED", err)
	}
	wrong, ctx3 := dial(t, statestream.WithToken(token+"x"))
	if _, err := wrong.Models(ctx3); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: %v, want UNAUTHENTICATED", err)
	}
}
