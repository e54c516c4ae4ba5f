// Command example opens a session, streams a synthetic sensor signal over StreamSteps one timestep per
// message, prints the outputs and reads the session's state back.
//
//	go run ./cmd/example -target localhost:50051 -model demo -steps 20
//	go run ./cmd/example -json    # one JSON document: inputs, outputs, final state
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/statestream/statestream/client/go/internal/sensor"
	"github.com/statestream/statestream/client/go/statestream"
)

type config struct {
	target, model, token string
	steps                int
	json                 bool
}

// report is what -json prints; float32 values are widened to float64 (exactly) so they round-trip.
type report struct {
	Model     string                          `json:"model"`
	SessionID string                          `json:"session_id"`
	Inputs    [][]float64                     `json:"inputs"`
	Outputs   [][]float64                     `json:"outputs"`
	StepCount uint64                          `json:"step_count"`
	States    map[string]map[string][]float64 `json:"states"`
}

func main() {
	cfg := config{}
	flag.StringVar(&cfg.target, "target", envOr("STATESTREAM_TARGET", "localhost:50051"), "server address (env STATESTREAM_TARGET)")
	flag.StringVar(&cfg.model, "model", "demo", "model name")
	flag.StringVar(&cfg.token, "token", os.Getenv("STATESTREAM_TOKEN"), "bearer token, if the server wants one (env STATESTREAM_TOKEN)")
	flag.IntVar(&cfg.steps, "steps", 20, "timesteps to stream")
	flag.BoolVar(&cfg.json, "json", false, "print one JSON document instead of text")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	var opts []statestream.Option
	if cfg.token != "" {
		opts = append(opts, statestream.WithToken(cfg.token))
	}
	client, err := statestream.Dial(cfg.target, opts...)
	if err != nil {
		return err
	}
	defer client.Close()

	session, err := client.OpenSession(ctx, cfg.model)
	if err != nil {
		return fmt.Errorf("open session on %q: %w", cfg.model, err)
	}
	defer session.Close(context.WithoutCancel(ctx))
	inputs := sensor.Signal(cfg.steps, int(session.Model.GetFeatures()))

	results, err := session.StreamAll(ctx, inputs, statestream.StepOptions{})
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	state, err := session.GetState(ctx)
	if err != nil {
		return fmt.Errorf("get state: %w", err)
	}

	rep := report{Model: cfg.model, SessionID: session.ID, StepCount: state.GetStepCount(),
		States: map[string]map[string][]float64{}}
	for i, r := range results {
		rep.Inputs = append(rep.Inputs, widen(inputs[i]))
		rep.Outputs = append(rep.Outputs, widen(r.Last()))
	}
	for _, l := range state.GetLayers() {
		s := map[string][]float64{"h": widen(l.GetH())}
		if len(l.GetC()) > 0 {
			s["c"] = widen(l.GetC())
		}
		rep.States[l.GetLayer()] = s
	}
	if cfg.json {
		enc := json.NewEncoder(out)
		return enc.Encode(rep)
	}
	fmt.Fprintf(out, "session %s on model %q\n", session.ID, cfg.model)
	for t := range rep.Inputs {
		fmt.Fprintf(out, "t=%3d input=%v output=%v\n", t, inputs[t], results[t].Last())
	}
	fmt.Fprintf(out, "state after %d steps:\n", rep.StepCount)
	for _, l := range state.GetLayers() {
		fmt.Fprintf(out, "  %s h=%v\n", l.GetLayer(), l.GetH())
		if len(l.GetC()) > 0 {
			fmt.Fprintf(out, "  %s c=%v\n", l.GetLayer(), l.GetC())
		}
	}
	return nil
}

func widen(xs []float32) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}
