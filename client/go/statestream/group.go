package statestream

import (
	"context"
	"fmt"
	"time"

	pb "github.com/statestream/statestream/client/go/statestreamv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Group is a session group: N sessions whose states the server keeps side by side, stepped by one message.
// Its calls carry the group id as x-session-id, so a proxy keeps the group on one replica. Each member is
// also an ordinary session (Sessions).
type Group struct {
	ID         string
	SessionIDs []string
	Model      *pb.ModelInfo
	client     *Client
}

// GroupOptions are the optional parts of OpenGroup: Size new sessions (random ids) or the given SessionIDs.
type GroupOptions struct {
	Size        int
	SessionIDs  []string
	GroupID     string
	IdleTimeout time.Duration
}

// OpenGroup opens a session group on model.
func (c *Client) OpenGroup(ctx context.Context, model string, o GroupOptions) (*Group, error) {
	ctx, cancel := c.unary(WithSession(ctx, o.GroupID))
	defer cancel()
	r, err := c.stub.OpenGroup(ctx, &pb.OpenGroupRequest{Model: model, Size: uint32(o.Size), SessionIds: o.SessionIDs,
		GroupId: o.GroupID, IdleTimeoutSeconds: o.IdleTimeout.Seconds()})
	if err != nil {
		return nil, err
	}
	return &Group{ID: r.GetGroupId(), SessionIDs: r.GetSessionIds(), Model: r.GetModel(), client: c}, nil
}

// Sessions are the members as ordinary sessions.
func (g *Group) Sessions() []*Session {
	out := make([]*Session, len(g.SessionIDs))
	for i, id := range g.SessionIDs {
		out[i] = &Session{ID: id, Model: g.Model, client: g.client}
	}
	return out
}

// GroupStepOptions: Masked members are not stepped (they keep their states; their rows are zero).
// SequenceNumber (the group's last + 1) makes the step exactly-once.
type GroupStepOptions struct {
	Masked          []uint32
	SequenceNumber  *int64
	ReturnSequences bool
}

// GroupResult holds per member the returned timesteps' outputs: Outputs[member][row] has OutputSize values.
type GroupResult struct {
	Outputs   [][][]float32
	StepCount uint64
	Replayed  bool
}

// Step applies inputs[member] (T x features values, row-major, the same T for every member) to every member.
func (g *Group) Step(ctx context.Context, inputs [][]float32, o GroupStepOptions) (*GroupResult, error) {
	features := int(g.Model.GetFeatures())
	if len(inputs) != len(g.SessionIDs) || len(inputs) == 0 || features == 0 || len(inputs[0])%features != 0 {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("statestream: a group step takes %d members x T x %d values", len(g.SessionIDs), features))
	}
	flat := make([]float32, 0, len(inputs)*len(inputs[0]))
	for _, x := range inputs {
		if len(x) != len(inputs[0]) {
			return nil, status.Error(codes.InvalidArgument, "statestream: every member of a group step needs the same number of timesteps")
		}
		flat = append(flat, x...)
	}
	ctx, cancel := g.client.unary(WithSession(ctx, g.ID))
	defer cancel()
	r, err := g.client.stub.StepGroup(ctx, &pb.StepGroupRequest{GroupId: g.ID, InputsRaw: EncodeFloats(flat),
		Timesteps: uint32(len(inputs[0]) / features), Masked: o.Masked, SequenceNumber: o.SequenceNumber,
		ReturnSequences: o.ReturnSequences, RawOutput: true})
	if err != nil {
		return nil, err
	}
	out, err := floatsOf(r.GetOutputs(), r.GetOutputsRaw())
	if err != nil {
		return nil, err
	}
	return &GroupResult{Outputs: rows(out, len(inputs), int(r.GetRows()), int(g.Model.GetOutputSize())),
		StepCount: r.GetStepCount(), Replayed: r.GetReplayed()}, nil
}

// Close closes the group and, unless keepSessions, its members; returns the group steps applied.
func (g *Group) Close(ctx context.Context, keepSessions bool) (uint64, error) {
	ctx, cancel := g.client.unary(WithSession(ctx, g.ID))
	defer cancel()
	r, err := g.client.stub.CloseGroup(ctx, &pb.CloseGroupRequest{GroupId: g.ID, KeepSessions: keepSessions})
	if err != nil {
		return 0, err
	}
	return r.GetStepCount(), nil
}

// rows splits n x rows x width values into [n][rows][width].
func rows(values []float32, n, rowsPer, width int) [][][]float32 {
	out := make([][][]float32, n)
	for i := range out {
		out[i] = make([][]float32, rowsPer)
		for r := range out[i] {
			at := (i*rowsPer + r) * width
			if at+width <= len(values) {
				out[i][r] = values[at : at+width]
			}
		}
	}
	return out
}

// FrameOptions are the optional parts of StepFrame.
type FrameOptions struct {
	// OpenIfMissing opens any listed session that is not open.
	OpenIfMissing   bool
	ReturnSequences bool
	// SequenceNumbers: empty, or one per session (0 = no check for that entry).
	SequenceNumbers []int64
}

// FrameResult holds per session its outputs (nil for an entry that failed) and the per-entry errors.
type FrameResult struct {
	Outputs    [][][]float32
	StepCounts []uint64
	// Errors by entry index: status errors for the entries not applied (the others were).
	Errors map[int]error
}

// StepFrame steps many sessions of one model with one message: inputs[i] (T x features values) for
// sessionIDs[i]. An entry's failure does not fail the others (FrameResult.Errors).
func (c *Client) StepFrame(ctx context.Context, model string, sessionIDs []string, inputs [][]float32, o FrameOptions) (*FrameResult, error) {
	if len(inputs) != len(sessionIDs) || len(inputs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "statestream: a frame takes one input per session")
	}
	info, err := c.Model(ctx, model)
	if err != nil {
		return nil, err
	}
	features := int(info.GetFeatures())
	flat := make([]float32, 0, len(inputs)*len(inputs[0]))
	for _, x := range inputs {
		if len(x) != len(inputs[0]) || features == 0 || len(x)%features != 0 {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("statestream: every entry of a frame needs the same T x %d values", features))
		}
		flat = append(flat, x...)
	}
	ctx, cancel := c.unary(ctx)
	defer cancel()
	r, err := c.stub.StepFrame(ctx, &pb.StepFrameRequest{Model: model, SessionIds: sessionIDs, InputsRaw: EncodeFloats(flat),
		Timesteps: uint32(len(inputs[0]) / features), ReturnSequences: o.ReturnSequences, OpenIfMissing: o.OpenIfMissing,
		SequenceNumbers: o.SequenceNumbers, RawOutput: true})
	if err != nil {
		return nil, err
	}
	out, err := floatsOf(r.GetOutputs(), r.GetOutputsRaw())
	if err != nil {
		return nil, err
	}
	res := &FrameResult{Outputs: rows(out, len(inputs), int(r.GetRows()), int(info.GetOutputSize())),
		StepCounts: r.GetStepCounts(), Errors: map[int]error{}}
	for _, e := range r.GetErrors() {
		res.Errors[int(e.GetIndex())] = status.Error(codes.Code(e.GetError().GetCode()), e.GetError().GetMessage())
		res.Outputs[e.GetIndex()] = nil
	}
	return res, nil
}
