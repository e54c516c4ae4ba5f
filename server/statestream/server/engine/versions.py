"""Model versions: which loaded version a new session gets (the default policy: latest), and why a stored session
can not be stepped here (its version is not loaded, or was loaded from other weights)."""

from __future__ import annotations

from statestream.contract.errors import FailedPrecondition, NotFound, StatestreamError, Unavailable, show
from statestream.server.engine.model import ModelRunner

Key = tuple[str, int]  # (model name, version): what runners, slabs and batchers are keyed by


def describe(model: str, version: int, sha256: str) -> str:
    """How errors name a version: model, version and the hash of its file."""
    return f"model {model!r} version {version} (sha256 {sha256[:16] or 'unrecorded'})"


class Versions:
    """The loaded versions of every model. A new session gets the version it names, else the latest loaded one
    that is not being unloaded (Triton's version_policy `latest: {num_versions: 1}`). A version being unloaded
    refuses new sessions; its sessions run on until they close or expire (or a forced unload closes them)."""

    def __init__(self, runners: dict[Key, ModelRunner]):
        self.runners = runners
        self.unloading: set[Key] = set()

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.runners})

    def of(self, name: str) -> list[int]:
        """The loaded versions of `name`, ascending."""
        return sorted(v for n, v in self.runners if n == name)

    def default(self, name: str) -> ModelRunner | None:
        """The version new sessions of `name` get when they name none: the latest not being unloaded."""
        live = [v for v in self.of(name) if (name, v) not in self.unloading]
        return self.runners[name, live[-1]] if live else None

    def pick(self, name: str, version: int = 0) -> ModelRunner:
        """The runner a new session of `name` runs on (`version` 0: the default)."""
        if version:
            r = self.runners.get((name, version))
            if r is None:
                known = self.of(name)
                if not known:
                    raise self.unknown(name)
                raise NotFound(f"model {show(name)} has no version {version} loaded; loaded: {known}")
            if r.key in self.unloading:
                raise FailedPrecondition(f"{describe(name, version, r.sha256)} is being unloaded: it takes no new "
                                         "sessions (its open sessions run until they close)")
            return r
        r = self.default(name)
        if r is None:
            if self.of(name):
                raise FailedPrecondition(f"every loaded version of model {show(name)} is being unloaded; it takes "
                                         "no new sessions")
            raise self.unknown(name)
        return r

    def unknown(self, name: str) -> NotFound:
        return NotFound(f"unknown model {show(name)}; this server serves {self.names()}")

    def refusal(self, model: str, version: int, sha256: str, width: int, shared: bool) -> StatestreamError | None:
        """Why a stored session (model, version, hash of the file that made its state, state width) can not be
        stepped here, or None. A record without a hash (written before versions) runs on whatever version 1
        is loaded; its next write records that file's hash."""
        r = self.runners.get((model, version))
        need = describe(model, version, sha256)
        if r is None:
            if shared:  # another replica may have it: the client retries there
                return Unavailable(f"this replica has not loaded {need}, which the session needs; retry on a "
                                   "replica that has, or load it here")
            return FailedPrecondition(f"the session needs {need}, which is not loaded; load that version to step it")
        if sha256 and sha256 != r.sha256:
            return FailedPrecondition(f"the session needs {need}, but that version is loaded from other weights "
                                      f"(sha256 {r.sha256[:16]}, {r.path}); it is never stepped on other weights: "
                                      "load the original file (as a new version for the new weights)")
        if width != r.state_width:
            return FailedPrecondition(f"the session's state has {width} floats; {need} has {r.state_width}")
        return None
