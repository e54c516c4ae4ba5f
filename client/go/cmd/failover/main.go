// Command failover streams the examples' sensor signal through one exactly-once session (open-or-attach by
// name), paced like a sensor, and prints one JSON line per acknowledged step, then a summary line. The
// failover test runs it (with the Python, asyncio Python and Node twins) through a replica killed with -9.
//
//	go run ./cmd/failover -session sensor-7 -steps 40 -pace 50ms
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"iter"
	"os"
	"time"

	"github.com/statestream/statestream/client/go/internal/sensor"
	"github.com/statestream/statestream/client/go/statestream"
)

type line struct {
	Step      int       `json:"step,omitempty"`
	Output    []float64 `json:"output,omitempty"`
	Done      bool      `json:"done,omitempty"`
	Retries   int64     `json:"retries"`
	StepCount uint64    `json:"step_count,omitempty"`
}

func main() {
	target := flag.String("target", envOr("STATESTREAM_TARGET", "localhost:50051"), "server address (env STATESTREAM_TARGET)")
	model := flag.String("model", "demo", "model name")
	id := flag.String("session", "failover-go", "session id (opened, or attached if open)")
	steps := flag.Int("steps", 40, "timesteps")
	pace := flag.Duration("pace", 50*time.Millisecond, "pause before each step")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of each step with its retries (plain: of each reply)")
	plain := flag.Bool("plain", false, "a plain (pipelined, not exactly-once) session")
	flag.Parse()
	if err := run(*target, *model, *id, *steps, *pace, *timeout, !*plain); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(target, model, id string, steps int, pace, timeout time.Duration, exactlyOnce bool) error {
	client, err := statestream.Dial(target, statestream.WithTimeout(timeout))
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()
	s, err := client.OpenOrAttach(ctx, model, id, statestream.SessionOptions{ExactlyOnce: exactlyOnce})
	if err != nil {
		return err
	}
	inputs := sensor.Signal(steps, int(s.Model.GetFeatures()))
	paced := iter.Seq[[]float32](func(yield func([]float32) bool) {
		for _, x := range inputs {
			time.Sleep(pace)
			if !yield(x) {
				return
			}
		}
	})
	out := json.NewEncoder(os.Stdout)
	n := 0
	for r, err := range s.Steps(ctx, paced, statestream.StepOptions{}) {
		if err != nil {
			return err
		}
		n++
		if err := out.Encode(line{Step: n, Output: widen(r.Last()), Retries: client.Retries()}); err != nil {
			return err
		}
	}
	st, err := s.GetState(ctx)
	if err != nil {
		return err
	}
	return out.Encode(line{Done: true, Retries: client.Retries(), StepCount: st.GetStepCount()})
}

func widen(xs []float32) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}
