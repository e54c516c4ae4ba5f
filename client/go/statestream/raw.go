package statestream

import (
	"encoding/binary"
	"fmt"
	"math"

	pb "github.com/statestream/statestream/client/go/statestreamv1"
)

// EncodeFloats is the wire's raw tensor form: little-endian float32, row-major (the *_raw fields).
func EncodeFloats(values []float32) []byte {
	b := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// DecodeFloats reads raw little-endian float32 bytes; the size must be a multiple of 4.
func DecodeFloats(b []byte) ([]float32, error) {
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("statestream: %d raw bytes are not a whole number of float32 values", len(b))
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

// floatsOf returns the raw bytes decoded if the server sent them, else the repeated floats.
func floatsOf(values []float32, raw []byte) ([]float32, error) {
	if len(raw) == 0 {
		return values, nil
	}
	return DecodeFloats(raw)
}

// decodeStates turns raw h_raw / c_raw states into the H / C floats callers read (in place).
func decodeStates(layers []*pb.LayerState) error {
	for _, l := range layers {
		h, err := floatsOf(l.GetH(), l.GetHRaw())
		if err != nil {
			return err
		}
		c, err := floatsOf(l.GetC(), l.GetCRaw())
		if err != nil {
			return err
		}
		l.H, l.C, l.HRaw, l.CRaw = h, c, nil, nil
	}
	return nil
}

// rawStates copies layer states into their raw form for a request (H / C become h_raw / c_raw).
func rawStates(layers []*pb.LayerState) []*pb.LayerState {
	out := make([]*pb.LayerState, len(layers))
	for i, l := range layers {
		out[i] = &pb.LayerState{Layer: l.GetLayer(), HRaw: EncodeFloats(l.GetH()), CRaw: EncodeFloats(l.GetC())}
		if len(l.GetHRaw()) > 0 || len(l.GetCRaw()) > 0 { // already raw: pass through
			out[i].HRaw, out[i].CRaw = l.GetHRaw(), l.GetCRaw()
		}
	}
	return out
}
