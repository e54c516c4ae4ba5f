// Package sensor is the synthetic sensor signal of the Go examples.
package sensor

// Signal is the synthetic sensor signal of the examples (Go, Node and the Python test build the
// same one): per feature j a triangle wave of period 40 steps, shifted 10 steps per feature, plus a
// small deterministic jitter. Every value is a multiple of 1/256 below 2 in magnitude, so it is exact
// in float32 and every language computes the very same input.
func Signal(steps, features int) [][]float32 {
	xs := make([][]float32, steps)
	for t := range xs {
		xs[t] = make([]float32, features)
		for j := range xs[t] {
			p := (t + 10*j) % 40
			tri := p
			if p >= 20 {
				tri = 40 - p
			}
			wave := float64(tri)/16 - 0.625
			jitter := float64((7*t+3*j)%17) / 64
			xs[t][j] = float32(wave + jitter - 0.125)
		}
	}
	return xs
}
