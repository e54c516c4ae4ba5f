package statestream

import (
	"math"
	"testing"
)

func TestRawFloatsRoundTripBitExact(t *testing.T) {
	in := []float32{0, float32(math.Copysign(0, -1)), 1.5, -3.25e-39, math.MaxFloat32, float32(math.Inf(-1))}
	b := EncodeFloats(in)
	if len(b) != 4*len(in) || b[8] != 0x00 || b[11] != 0x3f { // 1.5 = 0x3fc00000, little-endian
		t.Fatalf("encoding is not little-endian float32: % x", b)
	}
	out, err := DecodeFloats(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if math.Float32bits(in[i]) != math.Float32bits(out[i]) {
			t.Fatalf("value %d: %08x != %08x", i, math.Float32bits(in[i]), math.Float32bits(out[i]))
		}
	}
	if _, err := DecodeFloats(b[:5]); err == nil {
		t.Fatal("5 bytes decoded without an error")
	}
}

func TestStepRequestIsRaw(t *testing.T) {
	s := &Session{ID: "x"}
	r := s.request([]float32{1, 2, 3}, StepOptions{})
	if len(r.GetInput()) != 0 || len(r.GetInputRaw()) != 12 || !r.GetRawOutput() {
		t.Fatalf("step request is not raw: %v", r)
	}
}
