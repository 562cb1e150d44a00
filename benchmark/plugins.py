"""Third-party code: ``--plugin module_or_file`` (regularizers, models, datasets) and the
regularizers' entry-point group.

A ``--plugin`` module is imported, and whatever it registers is then known by name: a regularizer
(``@regularizers.register``), a model (``@models.register``) or a dataset
(``@benchmark.data.datasets.register_dataset``). A plugin is Python code: loading it imports (runs) it with the user's permissions, in this
process and in every worker. Plugins named on the command line are remembered in the
environment variable ``COMHE_PLUGINS`` so worker processes (``--jobs N``, Slurm) load them too;
a user who sets it loads those plugins in every command (README, "Adding a regularizer").
"""

from __future__ import annotations

import os

import regularizers

from benchmark.config import ConfigError

PLUGIN_ENV = "COMHE_PLUGINS"  # os.pathsep-separated; inherited by worker processes
_loaded: set[str] = set()


def load_plugins(extra: list[str] | None = None) -> None:
    """Import ``--plugin`` modules/files (and those of a parent process) so they register."""
    names = [p for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p] + list(extra or [])
    # Files by absolute path: workers may start in another directory.
    names = [os.path.abspath(n) if n.endswith(".py") else n for n in names]
    for name in dict.fromkeys(names):
        if name in _loaded:
            continue
        try:
            regularizers.load_plugin(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is a bad --plugin
            raise ConfigError(f"--plugin {name}: cannot load ({type(exc).__name__}: {exc})") from None
        _loaded.add(name)
    if names:
        os.environ[PLUGIN_ENV] = os.pathsep.join(dict.fromkeys(names))
