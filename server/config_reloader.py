"""Config reload without a restart: the experiments change live, everything else needs a restart.

A process started with ``--config FILE`` watches the file (every ``server.config_watch_interval_s``) and reloads it
when its content changes; ``scout.v1.Admin/ReloadConfig`` reloads it at once. The new file goes through the same
loader as at start; it is refused, with every reason logged once and returned to the Admin caller, and the old
configuration keeps serving, when

- it does not load (unknown key, bad value: the loader's message, naming the file and key);
- anything but ``[[experiments]]`` changed (ports, Redis, index, limits, join... need a restart);
- an existing variant's policy or parameters changed while its ``generation`` did not (its learned snapshot
  belongs to the old ones: bump its generation to start it over, or give it a new name), or an existing
  experiment's ``context_keys`` changed (its policies' features would no longer fit).

Accepted: new and removed experiments and variants, weights, salts, surfaces, candidate counts, emerging rules,
warm starts and generations. Variants whose generation and warm start are unchanged keep their learned policies;
the others start over (see :meth:`server.settings.Variant.initial_policy`). Every decision logs the
``config_version`` it was made under (:func:`server.settings.config_version`), so a reload changes assignment
for new decisions only and the logs say which configuration made each decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from server.settings import Settings, SettingsError, config_version

log = logging.getLogger(__name__)
RELOADABLE = ("experiments",)


def reload_problems(old: Settings, new: Settings) -> list[str]:
    """Why ``new`` cannot replace ``old`` in a running process (empty: it can)."""
    problems = [
        f"{f.name} changed: only [[experiments]] reload without a restart"
        for f in dataclasses.fields(Settings)
        if f.name not in RELOADABLE and getattr(old, f.name) != getattr(new, f.name)
    ]
    before = {e.name: e for e in old.experiments}
    for experiment in new.experiments:
        previous = before.get(experiment.name)
        if previous is None:
            continue
        if previous.context_keys != experiment.context_keys:
            problems.append(
                f"experiment {experiment.name!r}: context_keys changed; its policies' features would no longer fit "
                "(give the experiment a new name)"
            )
        variants = {v.name: v for v in previous.variants}
        for variant in experiment.variants:
            old_variant = variants.get(variant.name)
            if (
                old_variant is not None
                and (old_variant.policy, old_variant.params) != (variant.policy, variant.params)
                and old_variant.generation == variant.generation
            ):
                problems.append(
                    f"experiment {experiment.name!r}, variant {variant.name!r}: policy or params changed; its learned "
                    "snapshot belongs to the old ones (bump its generation to start it over, or give it a new name)"
                )
    return problems


class ConfigReloader:
    """Watches a config file and applies accepted changes.

    Parameters
    ----------
    path
        The ``--config`` file.
    load
        Reads the settings as at start (the file, ``SCOUT_*`` variables and the command line's overrides).
    settings
        The settings in force.
    apply
        Puts accepted settings in force (the server's or the worker's part).
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[], Settings],
        settings: Settings,
        apply: Callable[[Settings], Awaitable[None]],
    ) -> None:
        self.path, self.load, self.settings, self.apply = path, load, settings, apply
        self.reloads = 0
        self._seen = self._digest()
        self._lock = asyncio.Lock()

    def _digest(self) -> str:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return ""

    @property
    def version(self) -> str:
        """The config version in force."""
        return config_version(self.settings)

    async def step(self) -> float:
        """Reload if the file's content changed since it was last read; returns the watch interval."""
        digest = await asyncio.to_thread(self._digest)
        if digest and digest != self._seen:
            await self.reload()
        return self.settings.server.config_watch_interval_s

    async def reload(self) -> list[str]:
        """Read the file and apply it if it is acceptable; returns the reasons it was refused (empty: applied)."""
        async with self._lock:
            self._seen = await asyncio.to_thread(self._digest)
            try:
                new = await asyncio.to_thread(self.load)
            except SettingsError as exc:
                problems = [str(exc)]
            else:
                problems = reload_problems(self.settings, new)
            if problems:
                log.error("config %s refused, %s keeps serving: %s", self.path, self.version, "; ".join(problems))
                return problems
            if config_version(new) != self.version:
                await self.apply(new)
                log.info("config %s reloaded: version %s (was %s)", self.path, config_version(new), self.version)
                self.settings = new
                self.reloads += 1
            return []
