"""--loop: the event loop a server process runs on: asyncio's own, or uvloop's (`pip install ".[uvloop]"`)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Coroutine

LOOPS = ("auto", "asyncio", "uvloop")
INSTALL_HINT = 'pip install ".[uvloop]" from a statestream checkout, or --loop asyncio'


def check(choice: str) -> None:
    """ValueError (one line) for a --loop that is not one of LOOPS, or uvloop asked for and not installed."""
    if choice not in LOOPS:
        raise ValueError(f"--loop must be one of {', '.join(LOOPS)}, got {choice!r}")
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError(f"--loop uvloop: uvloop is not installed ({INSTALL_HINT})")


def factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The new-loop function for --loop `choice` (auto: uvloop's when it is installed); None is asyncio's."""
    if choice == "asyncio" or (choice == "auto" and importlib.util.find_spec("uvloop") is None):
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine, choice: str):
    """asyncio.run(main) on the loop --loop `choice` names."""
    new_loop = factory(choice)
    if new_loop is None:
        return asyncio.run(main)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(main)
    import uvloop  # pragma: no cover - Python 3.10: no asyncio.Runner

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(main)


def running() -> str:
    """The running loop's kind, as --loop names it: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
