"""`statestream-server`: parse the configuration, then serve in this process or supervise --workers N."""

from __future__ import annotations

import logging
import sys

from statestream.server.app import loops
from statestream.server.app.config import parse_config
from statestream.server.app.ports import BindError, check_bindable
from statestream.server.app.server import serve
from statestream.server.app.workers import run_workers

log = logging.getLogger("statestream.server")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    try:
        check_bindable(cfg.host, cfg.port)
    except BindError as e:
        print(f"statestream-server: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.workers > 1:
        return run_workers(cfg)
    try:
        loops.run(serve(cfg), cfg.loop)
    except BindError as e:  # taken between the check and the bind
        print(f"statestream-server: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
