// Package statestream is a small Go client for a statestream server: open a
// session, step it (unary or over the bidirectional stream), read and write its
// recurrent states. The generated stubs are in package statestreamv1; this
// package only adds deadlines, the optional bearer token and float32 slices.
//
//	c, err := statestream.Dial("localhost:50051")
//	s, err := c.OpenSession(ctx, "demo")
//	r, err := s.Step(ctx, []float32{0.1, 0.2, 0.3}, statestream.StepOptions{})
//	fmt.Println(r.Last())
//
// Errors are gRPC status errors (status.Code(err) gives the code), including
// the in-band errors of a stream.
package statestream

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	pb "github.com/statestream/statestream/client/go/statestreamv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// DefaultTimeout is the deadline of a unary call whose context has none.
const DefaultTimeout = 10 * time.Second

// Client is a connection to a statestream server. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	stub    pb.StateStreamServiceClient
	token   string
	timeout time.Duration
	retry   RetryPolicy
	retries atomic.Int64
}

// Option configures Dial.
type Option func(*dialConfig)

type dialConfig struct {
	token   string
	timeout time.Duration
	creds   credentials.TransportCredentials
	extra   []grpc.DialOption
	retry   RetryPolicy
}

// WithToken sends "authorization: Bearer TOKEN" on every call (servers started with --auth-token-file).
func WithToken(token string) Option { return func(c *dialConfig) { c.token = token } }

// WithTimeout sets the deadline of unary calls whose context has none (default DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(c *dialConfig) { c.timeout = d } }

// WithRetryPolicy sets the backoff of exactly-once sessions (default DefaultRetryPolicy).
func WithRetryPolicy(p RetryPolicy) Option { return func(c *dialConfig) { c.retry = p } }

// WithTransportCredentials uses TLS (or other credentials) instead of a plaintext connection.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *dialConfig) { c.creds = creds }
}

// WithDialOptions passes further options to grpc.NewClient.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) { c.extra = append(c.extra, opts...) }
}

// Dial creates a client for target ("host:port"); the connection is made lazily, on the first call.
func Dial(target string, opts ...Option) (*Client, error) {
	cfg := dialConfig{timeout: DefaultTimeout, creds: insecure.NewCredentials(), retry: DefaultRetryPolicy}
	for _, o := range opts {
		o(&cfg)
	}
	// A restarted server or a recovered replica is found again within about a second (gRPC's default backoff
	// grows to 120 s), as in the Python client.
	reconnect := grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond,
		Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}, MinConnectTimeout: 5 * time.Second})
	dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(cfg.creds), reconnect}, cfg.extra...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("statestream: %s: %w", target, err)
	}
	return &Client{conn: conn, stub: pb.NewStateStreamServiceClient(conn), token: cfg.token, timeout: cfg.timeout,
		retry: cfg.retry}, nil
}

// Retries is the number of attempts exactly-once sessions resent, over this client's life.
func (c *Client) Retries() int64 { return c.retries.Load() }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client, for calls this package does not wrap (StepFrame, StreamFrames).
// Use Context to add the token.
func (c *Client) Stub() pb.StateStreamServiceClient { return c.stub }

// SessionHeader names the session of a call in its metadata, so a proxy can route every call of one session to
// the same replica (HAProxy: balance hdr(x-session-id)). Sent automatically on every call that names a session.
const SessionHeader = "x-session-id"

// WithSession adds the x-session-id header for sessionID to ctx's outgoing metadata.
func WithSession(ctx context.Context, sessionID string) context.Context {
	if sessionID == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, SessionHeader, sessionID)
}

// Context adds the bearer token (if any) to ctx's outgoing metadata.
func (c *Client) Context(ctx context.Context) context.Context {
	if c.token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
}

// unary returns the context of one unary call: the token, and the default deadline if ctx has none.
func (c *Client) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = c.Context(ctx)
	if _, ok := ctx.Deadline(); ok || c.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// Models lists the models the server serves.
func (c *Client) Models(ctx context.Context) ([]*pb.ModelInfo, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	r, err := c.stub.ListModels(ctx, &pb.ListModelsRequest{})
	if err != nil {
		return nil, err
	}
	return r.GetModels(), nil
}

// Model describes one model: features, output size, layers and their states.
func (c *Client) Model(ctx context.Context, name string) (*pb.ModelInfo, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	r, err := c.stub.GetModel(ctx, &pb.GetModelRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return r.GetModel(), nil
}

// SessionOptions are the optional parts of OpenSession.
type SessionOptions struct {
	// SessionID is a client-chosen id; empty lets the server pick a random one.
	SessionID string
	// IdleTimeout before the server expires the session; 0 is the server's default.
	IdleTimeout time.Duration
	// InitialStates start the session from saved states (every layer); nil is zero states.
	InitialStates []*pb.LayerState
	// ExactlyOnce: the session numbers its steps and retries them through failures (see exactlyonce.go). With
	// a SessionID the open is retried too: ALREADY_EXISTS after a retry, for a session that has not stepped,
	// is taken as this call's own open whose answer was lost.
	ExactlyOnce bool
}

// OpenSession opens a session on model.
func (c *Client) OpenSession(ctx context.Context, model string, opts ...SessionOptions) (*Session, error) {
	var o SessionOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	req := &pb.OpenSessionRequest{Model: model, SessionId: o.SessionID, InitialStates: rawStates(o.InitialStates),
		IdleTimeoutSeconds: o.IdleTimeout.Seconds()}
	open := func(ctx context.Context, retry bool) (*pb.OpenSessionResponse, error) {
		ctx, cancel := c.unary(WithSession(ctx, o.SessionID))
		defer cancel()
		return c.stub.OpenSession(ctx, req, grpc.WaitForReady(retry))
	}
	if !o.ExactlyOnce || o.SessionID == "" {
		r, err := open(ctx, false)
		if err != nil {
			return nil, err
		}
		return &Session{ID: r.GetSessionId(), Model: r.GetModel(), client: c, exactlyOnce: o.ExactlyOnce}, nil
	}
	var r *pb.OpenSessionResponse
	retries, err := c.retry.attempts(ctx, c.timeout, func(actx context.Context, retry bool) error {
		var err error
		r, err = open(actx, retry)
		return err
	})
	c.retries.Add(int64(retries))
	if IsAlreadyExists(err) && retries > 0 {
		s, aerr := c.Attach(ctx, o.SessionID, model, SessionOptions{ExactlyOnce: true})
		if aerr == nil && s.lastSeq == 0 && s.attachedSteps == 0 {
			return s, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return &Session{ID: r.GetSessionId(), Model: r.GetModel(), client: c, exactlyOnce: true}, nil
}

// Attach returns a Session for an already open session id on model (one GetModel). With ExactlyOnce in opts,
// the numbering resumes from the server's last sequence number (one GetState).
func (c *Client) Attach(ctx context.Context, sessionID, model string, opts ...SessionOptions) (*Session, error) {
	info, err := c.Model(ctx, model)
	if err != nil {
		return nil, err
	}
	s := &Session{ID: sessionID, Model: info, client: c, exactlyOnce: len(opts) > 0 && opts[0].ExactlyOnce}
	if !s.exactlyOnce {
		return s, nil
	}
	st, err := s.GetState(ctx) // retried, as the session is exactly-once
	if err != nil {
		return nil, err
	}
	s.lastSeq, s.attachedSteps = st.GetLastSequenceNumber(), st.GetStepCount()
	return s, nil
}
