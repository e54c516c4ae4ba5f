"""Server settings: CLI flag > STATESTREAM_* environment variable > default."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from statestream.contract.triton_config import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_MAX_BATCH_SIZE,
)
from statestream.server.app import loops
from statestream.server.store.base import DEFAULT_TIMEOUT
from statestream.server.store.spec import STORE_HELP, check_spec

ENV_PREFIX = "STATESTREAM_"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

USAGE = """\
Serve exported recurrent models (statestream-export) over gRPC, one session per stream.

examples:
  statestream-server --models models/                 # every *.onnx in the folder
  statestream-server --models models/demo.onnx --port 50051 --metrics-port 9100
  STATESTREAM_MAX_SESSIONS=1000000 statestream-server --models models/

Every flag can also be set as STATESTREAM_<FLAG> (e.g. STATESTREAM_PORT=50052);
a flag given on the command line wins over the environment.
The model name is the file's stem: models/demo.onnx serves as "demo" (version 1); Triton's layout
models/<name>/<version>/model.onnx adds versions, new sessions get the latest (SIGHUP rescans the folders).
Health (grpc.health.v1) and reflection are always on; SIGTERM drains and exits 0.
Scale out: --workers N runs N processes on one port (one machine); replicas on several machines share
--state-store redis://HOST:PORT/DB, and any replica can serve any session.
"""


@dataclass
class Config:
    """The resolved settings of one server process."""

    models: list[str]
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0
    max_sessions: int = 100_000
    idle_timeout: float = DEFAULT_IDLE_SECONDS
    max_idle_timeout: float = 7 * 86400.0
    max_timesteps: int = 1024
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay: float = 0.0
    max_pending_per_session: int = 64
    max_pending: int = 100_000
    max_entries: int = 16_384
    max_request_timesteps: int = 65_536
    max_groups: int = 10_000
    frame_index: int = 65_536
    max_message_bytes: int = 16 * 1024 * 1024
    intra_op_threads: int = 1
    intra_op_spinning: int = 0
    inline_max_batch: int = 4096
    grace: float = 10.0
    sweep_interval: float = 1.0
    state_store: str = "memory"
    store_timeout: float = DEFAULT_TIMEOUT
    workers: int = 1
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_token_file: str = ""
    log_level: str = "INFO"
    repository_poll: float = 0.0
    loop: str = "auto"

    def model_files(self) -> list[tuple[Path, str, int]]:
        """Every model version named by --models, as (file, name, version), or ValueError. A folder is a model
        repository: `<name>.onnx` is version 1 of `<name>`, and Triton's layout `<name>/<version>/model.onnx`
        gives the versions of `<name>`."""
        files: list[tuple[Path, str, int]] = []
        for entry in self.models:
            p = Path(entry)
            if _is_keras(p):
                raise ValueError(f"--models {entry}: {_export_hint(p)}")
            if p.is_dir():
                found = [(f, f.stem, 1) for f in sorted(p.glob("*.onnx"))] + _versioned(p)
                if not found:
                    keras = sorted(f for f in p.iterdir() if _is_keras(f))
                    hint = f"; it has Keras models: {_export_hint(keras[0])}" if keras else ""
                    raise ValueError(f"--models {entry}: the folder has no .onnx file (nor <name>/<version>/"
                                     f"model.onnx){hint}")
                files.extend(found)
            elif p.is_file():
                files.append((p, p.stem, 1))
            else:
                raise ValueError(f"--models {entry}: no such file or folder")
        keys = [(name, v) for _, name, v in files]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise ValueError("--models: two files give the model version(s) "
                             + ", ".join(f"{n!r} version {v}" for n, v in sorted(dupes)))
        return files

    def as_flags(self) -> str:
        """The settings that differ from the defaults, as the flags that would set them (logged at start)."""
        changed = [(f.name, getattr(self, f.name)) for f in fields(Config)
                   if f.name == "models" or getattr(self, f.name) != f.default]
        return " ".join(f"--{name.replace('_', '-')} " + (" ".join(map(str, value)) if isinstance(value, list)
                                                          else str(value)) for name, value in changed)

    def validate(self) -> None:
        """Refuse bad settings before anything starts."""
        if not self.models:
            raise ValueError("--models is required (a folder of .onnx files, or files)")
        self.model_files()
        for name in ("max_sessions", "max_timesteps", "max_batch_size", "max_pending_per_session",
                     "max_pending", "max_entries", "max_request_timesteps", "max_groups", "max_message_bytes",
                     "intra_op_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.idle_timeout <= 0 or self.max_idle_timeout < self.idle_timeout:
            raise ValueError("--idle-timeout must be > 0 and <= --max-idle-timeout")
        if self.intra_op_spinning not in (0, 1):
            raise ValueError(f"--intra-op-spinning must be 0 or 1, got {self.intra_op_spinning}")
        if self.frame_index < 0:
            raise ValueError("--frame-index must be >= 0")
        if self.inline_max_batch < 0:
            raise ValueError("--inline-max-batch must be >= 0")
        if self.repository_poll < 0:
            raise ValueError("--repository-poll must be >= 0")
        if self.max_queue_delay < 0:
            raise ValueError("--max-queue-delay must be >= 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        loops.check(self.loop)
        kind, _ = check_spec(self.state_store)
        if self.store_timeout <= 0:
            raise ValueError(f"--store-timeout must be > 0, got {self.store_timeout}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.workers > 1 and kind == "memory":
            raise ValueError(f"--workers {self.workers} needs a shared state store: with --state-store memory each "
                             "worker process would hold its own sessions and a step could land on a worker that "
                             "does not know its session; use --state-store sqlite:PATH or redis://HOST:PORT/DB")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"--{name.replace('_', '-')} {path}: no such file")


def _versioned(folder: Path) -> list[tuple[Path, str, int]]:
    """Triton's repository layout: <folder>/<name>/<version>/model.onnx, version a positive integer."""
    out = []
    for model in sorted(d for d in folder.iterdir() if d.is_dir()):
        for vdir in sorted(model.iterdir()):
            if vdir.name.isdigit() and int(vdir.name) > 0 and (vdir / "model.onnx").is_file():
                out.append((vdir / "model.onnx", model.name, int(vdir.name)))
    return out


def _is_keras(p: Path) -> bool:
    """A Keras model file (.keras, .h5) or a SavedModel folder: what statestream-export reads, not the server."""
    return (p.is_file() and p.suffix.lower() in KERAS_SUFFIXES) or (p.is_dir() and (p / "saved_model.pb").is_file())


def _export_hint(p: Path) -> str:
    out = p.parent / f"{p.stem}.onnx"
    return (f"{p.name} is a Keras model; the server serves exported ONNX files. Export it first: "
            f"statestream-export {p} --out {out} (pip install \".[export]\" from a statestream checkout), "
            f"then statestream-server --models {out}")


HELP = {
    "models": "folder of .onnx files (name = file stem, version 1) and <name>/<version>/model.onnx, or .onnx files",
    "host": "address to bind (0.0.0.0 in a container)",
    "port": "gRPC port (0 = pick a free one)",
    "metrics_port": "Prometheus /metrics HTTP port (0 = off, -1 = any free port)",
    "max_sessions": "open sessions at most, all models; more is RESOURCE_EXHAUSTED",
    "idle_timeout": "seconds a session may stay idle before it expires (default per session)",
    "max_idle_timeout": "largest idle timeout a client may ask for",
    "max_timesteps": "largest T in one request",
    "max_batch_size": "sessions the batcher combines into one model run from several requests at most; one "
                      "frame or group step runs whole (--max-entries bounds it)",
    "max_queue_delay": "seconds the batcher waits to fill a batch (0 = take what is queued)",
    "max_pending_per_session": "queued steps per session at most",
    "max_pending": "queued steps in the whole server at most",
    "max_entries": "entries of one StepFrame and members of one group at most (bounds one request's memory and "
                   "loop time); more is RESOURCE_EXHAUSTED",
    "max_groups": "open session groups at most; more is RESOURCE_EXHAUSTED",
    "frame_index": "session ids of recent frames kept resolved (about 100 bytes each): a frame of the same ids "
                   "again skips the per-id lookups; 0 = off",
    "max_request_timesteps": "session-timesteps (entries x T) of one request at most: bounds the transient memory of "
                             "its model run; more is RESOURCE_EXHAUSTED",
    "max_message_bytes": "largest request message",
    "intra_op_threads": "onnxruntime intra-op threads",
    "intra_op_spinning": "with --intra-op-threads > 1: 1 = onnxruntime's workers spin between runs (its own "
                         "default), 0 = they sleep (measured: spinning cost 40-90%% more CPU per group step on 2 "
                         "shared cores, docs/performance.md)",
    "inline_max_batch": "model runs of at most this many session-timesteps run on the event loop, larger ones "
                        "on a worker thread (0 = always a thread; the thread hop waits for the GIL, which "
                        "measured 2x slower for frames of 256)",
    "grace": "seconds to drain in-flight calls on SIGTERM",
    "sweep_interval": "seconds between idle-expiry sweeps",
    "state_store": STORE_HELP,
    "store_timeout": "seconds one state store call may take; a store that does not answer in time (a stopped or "
                     "partitioned Redis, a locked sqlite file) fails the request UNAVAILABLE then, with nothing "
                     "applied by this server",
    "workers": "server processes sharing the port (SO_REUSEPORT: the kernel spreads connections over them); "
               "> 1 needs --state-store sqlite:PATH or redis://...; worker i serves metrics on --metrics-port + i",
    "tls_cert": "PEM certificate chain (enables TLS)",
    "tls_key": "PEM private key",
    "tls_client_ca": "PEM CA bundle; clients must present a certificate it signed (mutual TLS)",
    "auth_token_file": "file of accepted bearer tokens, one per line (enables auth)",
    "log_level": "DEBUG | INFO | WARNING | ERROR",
    "repository_poll": "seconds between scans of the --models folders for new, changed and removed model versions "
                       "(0 = off; SIGHUP and the KServe repository API rescan too)",
    "loop": "event loop: auto (uvloop's when it is installed, else asyncio's) | asyncio | uvloop (pip install "
            "\".[uvloop]\"; refused when it is not installed)",
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; defaults come from the environment, then Config."""
    parser = argparse.ArgumentParser(
        prog="statestream-server", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        if f.name == "models":
            default = os.environ[env].split(",") if os.environ.get(env) else []
            parser.add_argument(flag, nargs="+", default=default, help=f"{HELP[f.name]} [env {env}]")
            continue
        kind = {"int": int, "float": float, "str": str}[f.type]
        default = f.default
        if env in os.environ:
            try:
                default = kind(os.environ[env])
            except ValueError:
                parser.error(f"{env}={os.environ[env]!r} is not a valid {f.type} (for {flag})")
        parser.add_argument(flag, type=kind, default=default, help=f"{HELP[f.name]} [env {env}, default {f.default!r}]")
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse flags and environment into a validated Config, or exit 2 with the reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = Config(**vars(args))
    try:
        cfg.validate()
    except ValueError as e:  # one line, no usage dump: the flags parsed, a value is wrong
        print(f"{parser.prog}: {e}", file=sys.stderr)
        sys.exit(2)
    return cfg
