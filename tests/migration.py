"""A session stepped on one server, moved to another (GetState, then SetState on a fresh session) and stepped on."""

from __future__ import annotations

import numpy as np

from statestream.client import Client


def step_across(a: Client, b: Client, model: str, x: np.ndarray, initial: dict, half: int):
    """Steps x[:half] one timestep at a time on server `a` from `initial` states, moves the session to server `b`
    and steps x[half:] there in one request. Returns (every timestep's output, the final states, the step count
    `b` reports)."""
    s = a.session(model, initial_states=initial)
    got = [s.step(x[t]) for t in range(half)]
    saved = s.get_state()
    s.close()
    moved = b.session(model)
    moved.set_state(saved)
    rest, final = moved.step(x[half:], return_sequences=True, return_state=True)
    count = moved.get_state().step_count
    moved.close()
    return np.concatenate([np.array(got), rest]), final, count
