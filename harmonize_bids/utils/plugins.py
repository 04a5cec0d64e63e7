"""nipype execution plugins: MultiProc by default, any nipype plugin from a YAML file.

``--use-plugin FILE`` (as in fMRIPrep) names a plugin and its arguments, e.g. to
submit every step as a SLURM job::

    plugin: SLURMGraph
    plugin_args:
      dont_resubmit_completed_jobs: true
      sbatch_args: --time=01:00:00 --mem=8G --cpus-per-task=2
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harmonize_bids.exceptions import UsageError

#: nipype's execution plugins (``nipype.pipeline.plugins``).
KNOWN_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SLURMGraph", "SGE",
                 "SGEGraph", "PBS", "PBSGraph", "LSF", "Condor", "DAGMan", "OAR", "IPython")


def load_plugin_file(path: Path) -> tuple[str, dict[str, Any]]:
    """Read and check a plugin YAML file: ``(plugin name, plugin_args)``."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"--use-plugin: cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UsageError(f"--use-plugin: {path} is not valid YAML ({err})") from err
    if not isinstance(data, dict) or "plugin" not in data:
        raise UsageError(f"--use-plugin: {path} must be a mapping with a 'plugin' key, e.g. "
                         "'plugin: SLURMGraph'")
    name = data["plugin"]
    if name not in KNOWN_PLUGINS:
        raise UsageError(f"--use-plugin: unknown plugin {name!r}; nipype has "
                         + ", ".join(KNOWN_PLUGINS))
    args = data.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"--use-plugin: 'plugin_args' in {path} must be a mapping")
    unknown = set(data) - {"plugin", "plugin_args"}
    if unknown:
        raise UsageError(f"--use-plugin: unexpected key(s) {sorted(unknown)} in {path}")
    return name, args


def plugin_settings(plugin: str, plugin_args: dict[str, Any], *, nprocs: int,
                    mem_mb: int | None, status_callback=None) -> tuple[str, dict[str, Any]]:
    """The plugin and arguments to run a workflow with.

    For MultiProc, ``--nprocs``/``--mem-mb`` fill ``n_procs``/``memory_gb`` unless
    the file sets them; workers are *spawned* (forking after PyTorch ran can
    deadlock).  Every plugin gets the progress ``status_callback``.

    >>> plugin_settings("MultiProc", {}, nprocs=4, mem_mb=2048)[1]["memory_gb"]
    2.0
    >>> plugin_settings("SLURMGraph", {"sbatch_args": "-t 60"}, nprocs=4, mem_mb=None)[1]
    {'sbatch_args': '-t 60'}
    """
    args = dict(plugin_args)
    if plugin in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", nprocs)
        args.setdefault("raise_insufficient", False)
        if mem_mb:
            args.setdefault("memory_gb", mem_mb / 1024)
        if plugin == "MultiProc":
            args.setdefault("mp_context", "spawn")
    if status_callback is not None:
        args["status_callback"] = status_callback
    return plugin, args
