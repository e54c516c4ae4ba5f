"""Repository: model versions appear and leave while sessions run (hot reload: poll, SIGHUP, the KServe API)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from statestream.contract.errors import NotFound, show
from statestream.server.engine.model import ModelRunner
from statestream.server.engine.versions import Key, describe

log = logging.getLogger("statestream.repository")

READY, UNLOADING, UNAVAILABLE = "READY", "UNLOADING", "UNAVAILABLE"  # RepositoryIndex states (Triton's words)


@dataclass
class Entry:
    """One model version of the repository index."""

    name: str
    version: int
    state: str
    reason: str = ""


class Repository:
    """The model versions the --models folders hold, loaded into the engine.

    `sync` scans (`scan()` -> [(file, name, version)]) and loads every version not loaded yet, on a thread (steps
    of every loaded version go on meanwhile); a file that fails to load changes nothing served and its error
    names the file and the cause. A version whose file left the folder is unloaded: it takes no new sessions and
    its sessions run on until they close or expire (`reap` then frees it). A file changed under a loaded version
    is not swapped in: its sessions' states were made by the loaded weights (publish new weights as a new
    version). `unload(force=True)` closes the version's sessions at once, with a clear error."""

    def __init__(self, engine, scan, make_runner, add_batcher, drop_batcher):
        self.engine = engine
        self.table = engine.table
        self.scan = scan                  # () -> [(Path, name, version)]; ValueError when --models is unreadable
        self.make_runner = make_runner    # (path, name, version) -> ModelRunner (runs on a thread)
        self.add_batcher = add_batcher    # (runner) -> None: a started batcher for a new version
        self.drop_batcher = drop_batcher  # async (key) -> None: stop a version's batcher (nothing queued)
        self.errors: dict[Key, str] = {}  # versions whose file failed to load, and why
        self.held_back: set[Key] = set()  # unloaded through the API: a scan does not load them again
        self._seen: dict[Key, tuple[Path, int, int]] = {}  # the file of each loaded version: path, mtime, size
        self._lock = asyncio.Lock()

    def loaded(self, runner: ModelRunner) -> None:
        """A version loaded at start."""
        self._seen[runner.key] = _stat(runner.path)

    async def sync(self, only: str | None = None, explicit: bool = False) -> dict[Key, str]:
        """Load what the folders hold and is not loaded (only model `only` if given; `explicit`: a load request,
        which also loads versions unloaded through the API), unload what left them; the load errors."""
        async with self._lock:
            try:
                files = await asyncio.get_running_loop().run_in_executor(None, self.scan)
            except (ValueError, OSError) as e:
                log.error("model repository scan failed, nothing changed: %s", e)
                return {("", 0): str(e)}
            wanted = {(name, v): path for path, name, v in files if only is None or name == only}
            errors: dict[Key, str] = {}
            for key, path in sorted(wanted.items()):
                if explicit:
                    self.held_back.discard(key)
                if key in self.held_back:
                    continue
                r = self.table.runners.get(key)
                if r is None:
                    err = await self._load(key, path)
                    if err:
                        errors[key] = err
                    continue
                if key in self.table.versions.unloading:  # back in the folder: it takes new sessions again
                    self.table.versions.unloading.discard(key)
                    log.info("%s is back in the repository: it takes new sessions again", describe(*key, r.sha256))
                if _stat(path) != self._seen.get(key):
                    self._seen[key] = _stat(path)
                    log.error("%s: the file changed under a loaded version; the loaded weights stay (sessions' "
                              "states were made by them): publish new weights as a new version", path)
            for key in list(self.table.runners):
                if (only is None or key[0] == only) and key not in wanted and key not in self.table.versions.unloading:
                    await self.unload(key[0], key[1])
            return errors

    async def _load(self, key: Key, path: Path) -> str | None:
        loop = asyncio.get_running_loop()
        try:
            runner = await loop.run_in_executor(None, self.make_runner, path, key[0], key[1])
        except Exception as e:  # a bad file changes nothing served
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            self.errors[key] = msg
            log.error("model %r version %d not loaded: %s", key[0], key[1], msg)
            return msg
        self.errors.pop(key, None)
        self._seen[key] = _stat(path)
        self.table.add_version(runner)
        self.add_batcher(runner)
        default = self.table.versions.default(key[0])
        log.info("loaded %s from %s; new sessions of %r get version %d", describe(*key, runner.sha256), path,
                 key[0], default.version if default else key[1])
        return None

    async def unload(self, name: str, version: int = 0, force: bool = False, hold: bool = False) -> list[Key]:
        """Unload `version` of `name` (0: every version): no new sessions; open ones run until they close or
        expire, or (`force`) are closed now. `hold`: a scan does not load it again (an API unload)."""
        keys = [(name, v) for v in self.table.versions.of(name) if not version or v == version]
        if not keys:
            if version and self.table.versions.of(name):
                raise NotFound(f"model {show(name)} has no version {version} loaded")
            raise self.table.versions.unknown(name)
        for key in keys:
            self.table.versions.unloading.add(key)
            if hold:
                self.held_back.add(key)
            r = self.table.runners[key]
            if force:
                why = (f"{describe(*key, r.sha256)} was unloaded with force: its sessions were closed; open a new "
                       "session (on the default version)")
                for s in self.table.sessions_of(key):
                    await self.engine.directory.close(s)
                    self.table.closed_because(s, why)
            log.info("unloading %s: no new sessions; %d open ones run until they close or expire",
                     describe(*key, r.sha256), self.table.per_version[key])
        await self.reap()
        return keys

    async def reap(self) -> None:
        """Free the versions being unloaded that have no session left."""
        versions = self.table.versions
        for key in [k for k in versions.unloading if self.table.per_version.get(k) == 0]:
            await self.engine.batchers[key].drained()  # a run of a session closed meanwhile still uses the slab
            if key not in versions.unloading or self.table.per_version.get(key) != 0:
                continue  # back in the repository, or freed by another call, meanwhile
            r = self.table.runners[key]
            self.table.drop_version(key)  # no new session can find it from here on
            self._seen.pop(key, None)
            await self.drop_batcher(key)
            log.info("unloaded %s", describe(*key, r.sha256))

    def index(self) -> list[Entry]:
        """Every version loaded, being unloaded, or whose file failed to load."""
        out = [Entry(n, v, UNLOADING if (n, v) in self.table.versions.unloading else READY)
               for n, v in self.table.runners]
        out += [Entry(n, v, UNAVAILABLE, why) for (n, v), why in self.errors.items()
                if (n, v) not in self.table.runners]
        return sorted(out, key=lambda e: (e.name, e.version))


def _stat(path: Path) -> tuple[Path, int, int]:
    try:
        st = path.stat()
    except OSError:
        return path, 0, 0
    return path, st.st_mtime_ns, st.st_size

