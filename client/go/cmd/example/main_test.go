package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/statestream/statestream/client/go/internal/livetest"
	"github.com/statestream/statestream/client/go/internal/sensor"
)

func TestSensorSignalIsExactAndBounded(t *testing.T) {
	xs := sensor.Signal(100, 3)
	for _, row := range xs {
		for _, v := range row {
			if v < -1 || v > 1 || float32(float64(v)*256) != float32(int(float64(v)*256)) {
				t.Fatalf("value %v is not a multiple of 1/256 in [-1, 1]", v)
			}
		}
	}
	if xs[0][0] != -0.75 || xs[1][2] != 0.640625 {
		t.Fatalf("signal changed: %v %v", xs[0], xs[1])
	}
}

func TestExampleJSON(t *testing.T) {
	target := livetest.Target(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cfg := config{target: target, model: livetest.Model(), token: os.Getenv("STATESTREAM_TOKEN"), steps: 25, json: true}
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Inputs) != 25 || len(rep.Outputs) != 25 || rep.StepCount != 25 || len(rep.States) == 0 {
		t.Fatalf("report: %d inputs, %d outputs, step_count %d, %d layers", len(rep.Inputs), len(rep.Outputs),
			rep.StepCount, len(rep.States))
	}
}

func TestExampleText(t *testing.T) {
	target := livetest.Target(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cfg := config{target: target, model: livetest.Model(), token: os.Getenv("STATESTREAM_TOKEN"), steps: 3}
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if strings.Count(text, "output=") != 3 || !strings.Contains(text, "state after 3 steps") {
		t.Fatalf("unexpected output:\n%s", text)
	}
}
