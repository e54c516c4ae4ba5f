// The live server the tests run against: STATESTREAM_TARGET. Without it a test is skipped on a developer's
// machine and fails under CI (CI=true or STATESTREAM_NO_SKIP=1).
export const MODEL = process.env.STATESTREAM_MODEL || "demo";
export const TOKEN = process.env.STATESTREAM_TOKEN || "";

const CI = (process.env.CI || "").toLowerCase() === "true" || process.env.STATESTREAM_NO_SKIP === "1";
const MISSING = "STATESTREAM_TARGET is not set: start a server (statestream-server --models models/) and set " +
  "STATESTREAM_TARGET=host:port, or run tests/test_interop.py, which does both";

/** The target, or undefined after t.skip(); throws under CI. */
export function target(t) {
  const value = process.env.STATESTREAM_TARGET;
  if (value) return value;
  if (CI) throw new Error(MISSING);
  t.skip(MISSING);
  return undefined;
}

/** T timesteps of deterministic inputs. */
export function ramp(steps, features) {
  return Array.from({ length: steps }, (_, t) =>
    Array.from({ length: features }, (_, j) => Math.fround(Math.fround((t + 1) / steps) - j / 4)));
}

/** Float32 bit patterns, to compare floats exactly. */
export function bits(values) {
  return Array.from(new Uint32Array(Float32Array.from(values).buffer));
}
