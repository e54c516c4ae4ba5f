// Command loadtest opens N concurrent sessions, steps each of them M times (unary calls, or over one stream
// per session), and prints the step latencies' p50 and p99 and the throughput: the Go side of the load-test
// recipe (ghz measures the same from the proto alone).
//
//	go run ./cmd/loadtest -sessions 64 -steps 200            # unary steps
//	go run ./cmd/loadtest -sessions 64 -steps 200 -stream    # one StreamSteps call per session, lockstep
//	go run ./cmd/loadtest -json                              # one JSON document
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/statestream/statestream/client/go/internal/sensor"
	"github.com/statestream/statestream/client/go/statestream"
)

type report struct {
	Sessions      int     `json:"sessions"`
	Steps         int     `json:"steps"`
	Mode          string  `json:"mode"`
	Completed     int     `json:"completed"`
	P50ms         float64 `json:"p50_ms"`
	P99ms         float64 `json:"p99_ms"`
	StepsPerSec   float64 `json:"steps_per_second"`
	ServerSteps   uint64  `json:"server_steps"` // the step counts the server reported when the sessions closed
	ElapsedSecond float64 `json:"elapsed_seconds"`
}

func main() {
	target := flag.String("target", envOr("STATESTREAM_TARGET", "localhost:50051"), "server address (env STATESTREAM_TARGET)")
	model := flag.String("model", "demo", "model name")
	sessions := flag.Int("sessions", 16, "concurrent sessions")
	steps := flag.Int("steps", 100, "steps per session")
	stream := flag.Bool("stream", false, "one exactly-once stream per session instead of unary steps")
	asJSON := flag.Bool("json", false, "print one JSON document")
	flag.Parse()
	rep, err := run(*target, *model, *sessions, *steps, *stream)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(rep)
		return
	}
	fmt.Printf("%d sessions x %d steps (%s): p50 %.3f ms, p99 %.3f ms, %.0f steps/s\n",
		rep.Sessions, rep.Steps, rep.Mode, rep.P50ms, rep.P99ms, rep.StepsPerSec)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(target, model string, sessions, steps int, stream bool) (*report, error) {
	client, err := statestream.Dial(target)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx := context.Background()
	open := make([]*statestream.Session, sessions)
	for i := range open {
		if open[i], err = client.OpenSession(ctx, model, statestream.SessionOptions{ExactlyOnce: stream}); err != nil {
			return nil, err
		}
	}
	inputs := sensor.Signal(steps, int(open[0].Model.GetFeatures()))
	latencies := make([][]time.Duration, sessions)
	errs := make([]error, sessions)
	var wg sync.WaitGroup
	start := time.Now()
	for i, s := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			latencies[i], errs[i] = drive(ctx, s, inputs, stream)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for i := range open {
		if errs[i] != nil {
			for _, s := range open {
				s.Close(ctx)
			}
			return nil, fmt.Errorf("session %s: %w", open[i].ID, errs[i])
		}
		all = append(all, latencies[i]...)
	}
	slices.Sort(all)
	mode := "unary"
	if stream {
		mode = "stream"
	}
	rep := &report{Sessions: sessions, Steps: steps, Mode: mode, Completed: len(all), P50ms: ms(quantile(all, 0.50)),
		P99ms: ms(quantile(all, 0.99)), StepsPerSec: float64(len(all)) / elapsed.Seconds(), ElapsedSecond: elapsed.Seconds()}
	for _, s := range open {
		n, err := s.Close(ctx)
		if err != nil {
			return nil, err
		}
		rep.ServerSteps += n
	}
	return rep, nil
}

// drive steps one session through inputs; the latency of each step is from its send to its reply.
func drive(ctx context.Context, s *statestream.Session, inputs [][]float32, stream bool) ([]time.Duration, error) {
	out := make([]time.Duration, 0, len(inputs))
	if !stream {
		for _, x := range inputs {
			t0 := time.Now()
			if _, err := s.Step(ctx, x, statestream.StepOptions{}); err != nil {
				return out, err
			}
			out = append(out, time.Since(t0))
		}
		return out, nil
	}
	var sent time.Time
	timed := func(yield func([]float32) bool) {
		for _, x := range inputs {
			sent = time.Now()
			if !yield(x) {
				return
			}
		}
	}
	for _, err := range s.Steps(ctx, timed, statestream.StepOptions{}) {
		if err != nil {
			return out, err
		}
		out = append(out, time.Since(sent))
	}
	return out, nil
}

// quantile is the nearest-rank quantile of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
