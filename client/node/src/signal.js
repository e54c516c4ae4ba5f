// The synthetic sensor signal of the examples; Go (cmd/example) and the Python test build the very same one.

/**
 * Per feature j a triangle wave of period 40 steps, shifted 10 steps per feature, plus a small
 * deterministic jitter. Every value is a multiple of 1/256 below 2 in magnitude, so it is exact in
 * float32 and every language computes the same input. Returns `steps` rows of `features` numbers.
 */
export function sensorSignal(steps, features) {
  const rows = [];
  for (let t = 0; t < steps; t++) {
    const row = [];
    for (let j = 0; j < features; j++) {
      const p = (t + 10 * j) % 40;
      const tri = p < 20 ? p : 40 - p;
      const wave = tri / 16 - 0.625;
      const jitter = ((7 * t + 3 * j) % 17) / 64;
      row.push(Math.fround(wave + jitter - 0.125));
    }
    rows.push(row);
  }
  return rows;
}
