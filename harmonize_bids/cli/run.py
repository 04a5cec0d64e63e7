"""Entry point of ``harmonize_bids``: parse, collect inputs, build and run the workflow."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from harmonize_bids import __version__
from harmonize_bids.config import Settings
from harmonize_bids.exceptions import HarmonizeError, StorageError, UsageError
from harmonize_bids.utils.io import check_writable

LOGGER = logging.getLogger("harmonize_bids")
#: free space (MB) the output and work directories need before a run starts
MIN_FREE_MB = 100

#: Node names reported at default verbosity, with what they mean to a user.
MAJOR_STEPS = {
    "reorient": "check and reorient to RAS",
    "n4": "N4 bias-field correction",
    "reg_head_affine": "brain extraction: affine head-template registration",
    "reg_head_syn": "brain extraction: nonlinear head-template registration",
    "reg_brain": "registration to MNI152NLin2009aSym",
    "normalize": "intensity normalization in template space",
    "harmonize": "harmonization (diffusion model)",
}


def write_worker_nipype_config(work_dir: Path, verbose: int) -> Path:
    """A ``nipype.cfg`` with our log levels for spawned workers; return its folder."""
    from harmonize_bids.utils.io import atomic_write_text

    level = "INFO" if verbose >= 2 else "WARNING"
    folder = Path(work_dir) / "nipype_config"
    atomic_write_text(f"[logging]\nworkflow_level = {level}\ninterface_level = {level}\n"
                      f"utils_level = {level}\n\n[monitoring]\nenabled = false\n",
                      folder / "nipype.cfg")
    return folder


def _setup_logging(verbose: int) -> None:
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    logging.basicConfig(level=logging.WARNING if verbose < 2 else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    LOGGER.setLevel(logging.INFO if verbose < 2 else logging.DEBUG)
    level = "INFO" if verbose >= 2 else "WARNING"
    nipype_config.update_config({"logging": {"workflow_level": level, "interface_level": level,
                                             "utils_level": level}})
    nipype_logging.update_logging(nipype_config)


@dataclass
class ProgressReporter:
    """nipype ``status_callback``: prints each step per image and remembers failures."""

    labels: dict[str, str]  # workflow name -> image label
    verbose: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)

    def _label(self, node) -> str:
        for part in node.fullname.split("."):
            if part in self.labels:
                return self.labels[part]
        return "?"

    def __call__(self, node, status: str) -> None:
        label = self._label(node)
        step = MAJOR_STEPS.get(node.name)
        if status == "start":
            self._started[node.fullname] = time.monotonic()
            if step:
                LOGGER.info("[%s] %s ...", label, step)
        elif status == "end":
            elapsed = time.monotonic() - self._started.pop(node.fullname, time.monotonic())
            if step or self.verbose:
                LOGGER.info("[%s] %s done (%.1f s)", label, step or node.name, elapsed)
        elif status == "exception":
            self.failed.setdefault(label, []).append(node.name)
            LOGGER.error("[%s] FAILED at %s", label, step or node.name)


def resolve_model(model: Path | None) -> Path:
    """The model file to use: ``--model`` or the bundled one."""
    from harmonize_bids.diffusion.checkpoint import bundled_model

    if model is not None:
        return model
    bundled = bundled_model()
    if bundled is None:
        raise UsageError("This installation has no bundled model: pass --model FILE "
                         "(e.g. OUTPUT_DIR/models/harmonize_bids_model.safetensors from the "
                         "group level).")
    return bundled


#: nipype plugins that run every node on this machine
LOCAL_PLUGINS = ("MultiProc", "Linear")


def check_device(device: str, plugin: str = "MultiProc") -> None:
    """Refuse ``--device cuda`` up front (exit 64) where the model would run here and
    no GPU is usable, instead of failing every image after its preprocessing.  Jobs
    sent to a cluster scheduler (other plugins) may land on GPU nodes: not checked."""
    from harmonize_bids.interfaces.harmonize import resolve_device

    if device != "cuda" or plugin not in LOCAL_PLUGINS:
        return
    try:
        resolve_device(device)
    except RuntimeError as err:
        raise UsageError(f"{err}: use --device cpu or auto") from None


def check_target_site(model_file: Path, target_site: str, match_intensities: str = "none"
                      ) -> str:
    """Refuse early (exit 64) a target site the model does not know, or intensity
    landmarks it does not store for that site; return the landmark scheme to use
    (``'auto'`` resolved to the finest the model stores for the site, or ``'none'``)."""
    from harmonize_bids.diffusion.checkpoint import read_config
    from harmonize_bids.site_intensity import finest_scheme, target_landmarks

    config = read_config(model_file)
    try:
        config.site_index(target_site)
    except KeyError as err:
        raise UsageError(f"--target-site: {err.args[0]}") from None
    if match_intensities == "auto":
        scheme = finest_scheme(config, target_site)
        if scheme == "none":
            LOGGER.info("The model stores no tissue intensity landmarks for '%s': the "
                        "output is not intensity-matched (--match-intensities auto).",
                        target_site)
        return scheme
    if match_intensities != "none":
        try:
            target_landmarks(config, target_site, match_intensities)
        except ValueError as err:
            raise UsageError(f"--match-intensities {match_intensities}: {err}") from None
    return match_intensities


def print_model_info(model: Path | None) -> int:
    """``--model-info``: the model card as JSON."""
    import json

    from harmonize_bids.diffusion.checkpoint import file_sha256, read_card, read_config

    path = resolve_model(model)
    config = read_config(path)
    card = read_card(path)
    card.update({"model_file": str(path), "sha256": file_sha256(path),
                 "sites": list(config.sites), "config": config.to_dict()})
    print(json.dumps(card, indent=2, sort_keys=True))
    return 0


@contextmanager
def thread_environment(omp_nthreads: int, nipype_config_dir: Path | None = None
                       ) -> Iterator[None]:
    """Environment of the worker processes nipype starts inside the block.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, at its
    first use, so it must be in the environment the workers inherit.  Spawned
    workers also re-read nipype's configuration (its log levels) from
    ``NIPYPE_CONFIG_DIR``, see :func:`write_worker_nipype_config`.
    """
    keys = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "NIPYPE_CONFIG_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(omp_nthreads) for k in keys[:2]})
    if nipype_config_dir is not None:
        os.environ["NIPYPE_CONFIG_DIR"] = str(nipype_config_dir)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def collect_records(settings: Settings):
    """Validate the input (unless skipped), select the T1w images, resolve their sites."""
    from harmonize_bids.utils import bids as bids_utils

    layout = bids_utils.load_layout(settings.bids_dir)
    if not settings.skip_bids_validation:
        LOGGER.info("Validating %s with bids-validator-deno ...", settings.bids_dir)
        bids_utils.validate_dataset(settings.bids_dir, settings.participant_label,
                                    settings.work_dir / "bids_validation")
    files = bids_utils.collect_t1w(layout, settings.participant_label, settings.session_label,
                                   settings.bids_filters)
    records = bids_utils.resolve_sites(layout, files, settings.site_column,
                                       settings.site_from_session)
    LOGGER.info("Selected %d T1w image(s) from %d participant(s). Sites:\n%s", len(records),
                len({r.subject for r in records}), bids_utils.format_site_table(records))
    unknown = [r.label for r in records if r.site_source == "none"]
    if unknown:
        LOGGER.warning("%d image(s) have no site (no participants.tsv '%s' value, no "
                       "scanner fields in their sidecars) and are pooled as site 'unknown': "
                       "%s. Name their sites in participants.tsv (--site-column).",
                       len(unknown), settings.site_column, ", ".join(unknown[:10]))
    return records


def build_workflow(settings: Settings):
    """Collect the inputs and build the nipype workflow; return (workflow, records)."""
    from harmonize_bids.workflows.base import HarmonizeOptions, init_harmonize_bids_wf

    records = collect_records(settings)
    harmonize = None
    if settings.target_site is not None:
        check_device(settings.device, settings.plugin)
        model_file = resolve_model(settings.model)
        scheme = check_target_site(model_file, settings.target_site,
                                   settings.match_intensities)
        sampler = settings.sampler()
        if settings.site_landmarks is not None:
            from harmonize_bids.dataset_landmarks import read_site_landmarks
            from harmonize_bids.diffusion.checkpoint import read_config
            from harmonize_bids.site_intensity import target_landmarks, target_site_weight

            # refuse a malformed file or one measured at another voxel size before any work
            config = read_config(model_file)
            statistics = read_site_landmarks(settings.site_landmarks, config.voxel_mm)
            try:  # for the log only: the harmonize step decides per scan
                weight = target_site_weight(
                    target_landmarks(config, settings.target_site, scheme), statistics,
                    settings.target_site) if scheme != "none" else None
            except ValueError:  # the file measured in another landmark scheme
                weight = None
            LOGGER.info("Tissue intensities keep each scan's place among its site's scans "
                        "(%s: %s); the target site's landmarks: %s", settings.site_landmarks,
                        ", ".join(f"{site} {s.images}" for site, s in sorted(statistics.items())),
                        "the model's stored ones" if not weight else
                        f"moved from the model's stored ones towards the dataset's own scans "
                        f"of it by a weight of {weight:.2f}")
        elif scheme != "none":
            from harmonize_bids.derivatives import site_landmarks_path

            LOGGER.info("Tissue intensities are matched to the model's stored landmarks of "
                        "'%s'. With the dataset's site landmarks (%s, written by 'group "
                        "--landmarks-only' after preprocessing) the match keeps each "
                        "subject's part and takes the dataset's own scans of the target site "
                        "as reference: closer to the true target image (docs/model.md, "
                        "'Decisions of session 32').", settings.target_site,
                        site_landmarks_path(settings.output_dir))
        harmonize = HarmonizeOptions(model_file=model_file, target_site=settings.target_site,
                                     sampler=sampler, device=settings.device,
                                     mem_mb=settings.mem_mb, match_intensities=scheme,
                                     level_slices=settings.level_slices,
                                     keep_target_site=settings.keep_target_site,
                                     site_landmarks=settings.site_landmarks)
        kept = [r.label for r in records if harmonize.keeps(r)]
        if kept:
            LOGGER.info("%d of %d image(s) were acquired at site '%s' and are written "
                        "unchanged as its reference: %s. Harmonized images stay "
                        "distinguishable from them; for statistics pooled over all sites, "
                        "rerun with --harmonize-target-site (the model on every image).",
                        len(kept), len(records), settings.target_site, ", ".join(kept))
        LOGGER.info("Harmonizing to site '%s' with %s (%d steps, strength %g, stop at %g, "
                    "%d chain(s), source-site guidance %g; slice levels equalized: %s; "
                    "tissue intensity landmarks: %s)",
                    settings.target_site, model_file, sampler.steps, sampler.strength,
                    sampler.stop, sampler.samples, sampler.source_guidance,
                    settings.level_slices, scheme)
    else:
        LOGGER.info("No --target-site: preprocessing only.")
    workflow = init_harmonize_bids_wf(
        records=records, output_dir=settings.output_dir, omp_nthreads=settings.omp_nthreads,
        sloppy=settings.sloppy, random_seed=settings.random_seed, harmonize=harmonize)
    workflow.base_dir = str(settings.work_dir)
    workflow.config["execution"] = {
        "crashdump_dir": str(settings.work_dir / "crash"),
        "crashfile_format": "txt",
        "hash_method": "content",
        "stop_on_first_crash": settings.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        "check_version": False,
        "poll_sleep_duration": 0.5,
    }
    return workflow, records


def _run_participant(settings: Settings) -> int:
    from harmonize_bids.derivatives import OUTPUTS, derivative_path, init_derivatives
    from harmonize_bids.utils.plugins import plugin_settings
    from harmonize_bids.workflows.base import workflow_name
    from harmonize_bids.workflows.outputs import ANAT_OUTPUTS

    workflow, records = build_workflow(settings)
    init_derivatives(settings.output_dir, settings.bids_dir)
    config_file = settings.to_filename(settings.work_dir / "config.toml")
    LOGGER.info("Settings written to %s", config_file)

    reporter = ProgressReporter({workflow_name(r): r.label for r in records}, settings.verbose)
    # MultiProc workers are spawned (see utils/plugins.py); spawned workers also read
    # the thread environment set just below.
    plugin, plugin_args = plugin_settings(settings.plugin, settings.plugin_args,
                                          nprocs=settings.nprocs, mem_mb=settings.mem_mb,
                                          status_callback=reporter)
    if plugin != "MultiProc":
        LOGGER.info("Running the steps with nipype's %s plugin", plugin)
    started = time.monotonic()
    try:
        with thread_environment(settings.omp_nthreads,
                                write_worker_nipype_config(settings.work_dir, settings.verbose)):
            workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as err:  # nipype: "Workflow did not execute cleanly"
        LOGGER.debug("nipype: %s", err)
    elapsed = time.monotonic() - started

    expected = list(ANAT_OUTPUTS.values())
    if settings.target_site is not None:
        expected += ["std_harmonized", "harmonized"]
    rows, n_failed = [], 0
    for rec in records:
        missing = [k for k in expected
                   if k in OUTPUTS and not derivative_path(settings.output_dir, rec.entities, k).exists()]
        failed = rec.label in reporter.failed or bool(missing)
        n_failed += failed
        why = ",".join(reporter.failed.get(rec.label, [])) or (f"missing {missing[0]}" if missing else "")
        rows.append(f"  {rec.label:<40} {rec.site:<20} {'FAILED ' + why if failed else 'ok'}")
    write_reports(settings.output_dir, records)
    LOGGER.info("Summary (%.0f s):\n%s", elapsed, "\n".join(rows))
    if n_failed:
        LOGGER.error("%d of %d image(s) failed; crash reports in %s", n_failed, len(records),
                     settings.work_dir / "crash")
        for folder in (settings.output_dir, settings.work_dir):
            if shutil.disk_usage(folder).free < MIN_FREE_MB * 2**20:
                LOGGER.error("The disk holding %s is (nearly) full: free space and rerun; "
                             "finished steps are kept in the work directory", folder)
                return StorageError.exit_code
        return 1
    LOGGER.info("Outputs in %s", settings.output_dir)
    return 0


def write_reports(output_dir: Path, records) -> None:
    """One HTML report per participant; a failing report is logged, never fatal."""
    from harmonize_bids.reports import write_report
    from harmonize_bids.templates import get_template

    by_subject: dict[str, list] = {}
    for rec in records:
        by_subject.setdefault(rec.subject, []).append(rec)
    for subject, recs in by_subject.items():
        try:
            path = write_report(output_dir, subject, recs, get_template("mni_brain"))
            LOGGER.debug("Report: %s", path)
        except Exception as err:  # noqa: BLE001 - a figure must never fail the run
            LOGGER.warning("Could not write the report of sub-%s: %s", subject, err)


def run(settings: Settings) -> int:
    """Run the analysis level asked for; return the exit code."""
    LOGGER.info("harmonize_bids %s: %s level", __version__, settings.analysis_level)
    LOGGER.info("  input   %s\n  output  %s\n  work    %s\n  seed    %d%s", settings.bids_dir,
                settings.output_dir, settings.work_dir, settings.random_seed,
                "  (sloppy)" if settings.sloppy else "")
    # fail before any work when the outputs or the work dir cannot be written
    check_writable(settings.output_dir, MIN_FREE_MB)
    check_writable(settings.work_dir, MIN_FREE_MB)
    if settings.analysis_level == "group":
        return _run_group(settings)
    return _run_participant(settings)


def _run_group(settings: Settings) -> int:
    """Unless ``landmarks_only``, train a model on the participants' preprocessed brains
    (sites from the site table); then measure each site's tissue landmarks over them."""
    from harmonize_bids.dataset_landmarks import measure_site_landmarks
    from harmonize_bids.derivatives import site_landmarks_path
    from harmonize_bids.site_intensity import STORED_PER_TISSUE
    from harmonize_bids.training.group import GroupOptions, model_voxel_mm, train_group_model

    if not settings.landmarks_only:
        check_device(settings.device)
    records = collect_records(settings)
    settings.to_filename(settings.work_dir / "config_group.toml")
    options = GroupOptions(
        train_steps=settings.train_steps, batch_size=settings.batch_size,
        patch_size=settings.patch_size, learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        start_from=None if settings.from_scratch else resolve_model(settings.model),
        shifted_copies=settings.shifted_copies, device=settings.device,
        num_threads=settings.omp_nthreads, seed=settings.random_seed,
        gradient_checkpointing=settings.gradient_checkpointing,
        checkpoint_every=max(1, min(200, settings.train_steps // 10)))
    if not settings.landmarks_only:
        train_group_model(records, settings.output_dir, settings.work_dir, options,
                          log=lambda msg: LOGGER.info("%s", msg))
    # measured at the voxel size of the model the participant level will use: the group
    # model's (its starting model's, or a new network's; --from-scratch needs no bundled
    # one); after the training, so that a refused or failed one leaves the file as it was
    measure_site_landmarks(records, settings.output_dir, model_voxel_mm(options),
                           STORED_PER_TISSUE, site_landmarks_path(settings.output_dir),
                           log=lambda msg: LOGGER.info("%s", msg))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    from harmonize_bids.cli.parser import model_info_request, parse_args

    try:
        info = model_info_request(argv)
        if info is not False:
            return print_model_info(info)
        settings = parse_args(argv)
    except HarmonizeError as err:
        print(f"harmonize_bids: error: {err}", file=sys.stderr)
        return err.exit_code
    _setup_logging(settings.verbose)
    try:
        return run(settings)
    except HarmonizeError as err:
        LOGGER.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        LOGGER.error("Interrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
