"""The BIDS-App command line, spelled like fMRIPrep/MRIQC.

``_build_parser`` only builds argparse; ``parse_args`` checks the options and
returns a frozen :class:`~harmonize_bids.config.Settings`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from harmonize_bids import __version__
from harmonize_bids.config import Settings
from harmonize_bids.diffusion.schedule import SamplerSettings
from harmonize_bids.exceptions import InputError, UsageError
from harmonize_bids.site_intensity import MIN_SITE_IMAGES, SCHEMES
from harmonize_bids.utils.bids import clean_labels, load_bids_filters


class _Parser(argparse.ArgumentParser):
    """argparse that exits with EX_USAGE (64) on a usage error, as BIDS Apps do."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage()
        self.exit(64, f"{self.prog}: error: {message}\n")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return number


def _strength(value: str) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def _stop_at(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def version_text() -> str:
    """``harmonize_bids X.Y`` plus the container build (flavour, commit, date) if any."""
    build = os.environ.get("HARMONIZE_BIDS_BUILD")
    return f"harmonize_bids {__version__}" + (f" ({build})" if build else "")


class _PrintVersion(argparse.Action):
    """``--version`` without argparse's line wrapping (build strings are long)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harmonize_bids",
        description=(
            "Harmonize T1-weighted MRI across scanners and sites with a conditional "
            "diffusion model (a BIDS App). The participant level preprocesses each T1w "
            "(N4, ANTs brain extraction, registration to MNI152NLin2009aSym) and, with "
            "--target-site, harmonizes it; the group level trains a model on the "
            "dataset's own sites."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="root of the output derivative dataset (created if missing)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="'participant': preprocess (and harmonize) each T1w; "
                             "'group': train a model on the preprocessed participants")
    parser.add_argument("--version", action=_PrintVersion, nargs=0,
                        help="show the version (and container build) and exit")

    sel = parser.add_argument_group("Selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="participants to process (the 'sub-' prefix is optional); "
                          "default: all")
    sel.add_argument("--session-label", "--session-id", nargs="+", metavar="LABEL",
                     help="sessions to process (the 'ses-' prefix is optional); default: all")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help="JSON file of pybids filters, e.g. "
                          '{"t1w": {"acquisition": "mprage", "run": null}}; '
                          "null means 'entity absent', \"*\" means 'any'")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                     help="do not validate the input with bids-validator-deno")

    site = parser.add_argument_group("Sites")
    site.add_argument("--site-column", default="site",
                      help="participants.tsv column that names each participant's site; "
                           "without it, sites come from sidecar scanner fields")
    site.add_argument("--site-from-session", action="store_true",
                      help="use the session label as the site when participants.tsv has none")

    model = parser.add_argument_group("Harmonization")
    model.add_argument("--target-site", metavar="SITE",
                       help="site to harmonize to; without it the participant level stops "
                            "after preprocessing")
    model.add_argument("--model", type=Path, metavar="FILE",
                       help="model file (.safetensors); default: the bundled model. The "
                            "participant level harmonizes with it; the group level starts "
                            "training from it (unless --from-scratch)")
    model.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where the model runs; 'auto' uses a GPU when one is available")
    model.add_argument("--steps", type=_positive_int, default=SamplerSettings.steps,
                       help="denoising steps of the skip sampler (network evaluations)")
    model.add_argument("--strength", type=_strength, default=SamplerSettings.strength,
                       help="1: start from pure noise; <1: start from the noised source "
                            "(keeps more of the source: 0.7-0.8 came 0.3-0.5 dB closer to "
                            "the true target image, but the source site showed a little "
                            "more)")
    model.add_argument("--stop-at", type=_stop_at, default=SamplerSettings.stop,
                       metavar="FRACTION",
                       help="end the chain at this fraction of the noise schedule and return "
                            "the model's clean-image estimate there: 0 draws a full sample "
                            "(thermal-noise texture included); larger values average out what "
                            "the source cannot predict (smoother, closer to the truth on "
                            "average); must be below --strength")
    model.add_argument("--samples", type=_positive_int, default=SamplerSettings.samples,
                       metavar="N",
                       help="independent chains averaged into one image (an estimate of the "
                            "posterior mean: closer to the truth on average, N times the "
                            "time); the default 5 steps x 2 chains costs as much as --steps 10 "
                            "--samples 1 and scores better")
    model.add_argument("--source-guidance", type=_non_negative, metavar="W",
                       default=SamplerSettings.source_guidance,
                       help="push every denoising step away from what the model makes of the "
                            "slice for the scan's own site: f(target) + W (f(target) - "
                            "f(source site)); only for sources whose site the model knows "
                            "(others, and the target's own scans, run unguided). Moves "
                            "tissue contrast further towards the target site; doubles the "
                            "network evaluations. 0: off")
    model.add_argument("--match-intensities", nargs="?", const="medians", default="auto",
                       choices=["auto", "none", *SCHEMES],
                       help="finish each harmonized brain with a monotone intensity map onto "
                            "the target site's tissue landmarks (stored in the model): "
                            "'medians' (the bare flag) moves the CSF, grey- and white-matter "
                            "median intensities, 'quartiles' also each tissue's spread, "
                            "'deciles' each tissue's whole intensity distribution, "
                            "'vigintiles' the same on a 5 %% grid (finer schemes need a "
                            "model that stores them); 'auto' (the default) the finest scheme "
                            "the model stores for the target site ('none' if it stores "
                            "none). Finer schemes make the source site harder to tell from "
                            "the output's histogram at a small cost in similarity to the "
                            "true target image (benchmarks/results/"
                            "quality_vs_peers_deciles.md)")
    model.add_argument("--keep-subject-intensities", action=argparse.BooleanOptionalAction,
                       default="auto",
                       help="map each brain onto the target site's tissue landmarks moved by "
                            "where the scan stands among its own site's scans in this dataset "
                            "(a z-score per landmark), so the match removes the scanner's "
                            "part of the intensities and keeps the subject's; with "
                            f"{MIN_SITE_IMAGES} or more scans of the target site itself in "
                            "the dataset, their landmarks stand for the target site instead of "
                            "the model's, as far as they differ from them beyond their own "
                            "sampling noise (ComBat's reference batch, shrunk James-Stein "
                            "style; a scan from a site with fewer than "
                            f"{MIN_SITE_IMAGES} scans is matched to that reference). "
                            "Closer to the true target image, site no easier to tell "
                            "(docs/model.md, 'Decisions of session 25', '26' and '32'). Needs "
                            "the dataset's site landmarks: run the participant level without "
                            "--target-site, then 'group --landmarks-only', then the "
                            "participant level with --target-site. By default it is used "
                            "whenever that file exists (OUTPUT_DIR/site_landmarks.json or "
                            "--site-landmarks; 'auto'); --keep-subject-intensities requires "
                            "it, --no-keep-subject-intensities matches every brain onto the "
                            "model's stored landmarks of the target site")
    model.add_argument("--site-landmarks", type=Path, metavar="FILE", default=None,
                       help="the dataset's site landmarks file the subject-kept tissue match "
                            "reads (default: OUTPUT_DIR/site_landmarks.json, written by "
                            "'group --landmarks-only' and before group training)")
    model.add_argument("--no-level-slices", dest="level_slices", action="store_false",
                       help="keep the slice-to-slice jumps in overall intensity of the "
                            "slice-wise model's output; by default they are removed against "
                            "the source (a linear intensity map of it; the smooth trend "
                            "across slices and everything within a slice stay the model's), "
                            "which brings the output closer to the true target image on "
                            "every score (docs/model.md, 'Decisions of session 17')")
    model.add_argument("--harmonize-target-site", dest="keep_target_site",
                       action="store_false",
                       help="also run the model on images acquired at the target site; by "
                            "default they are the reference the other sites are brought to "
                            "and their brain is written unchanged as the harmonized image "
                            "(as ComBat leaves its reference batch), because the model can "
                            "only add its own error to them. The harmonized images still "
                            "look unlike them (smoother), so for statistics pooled over all "
                            "sites, target site included, use this flag: every image then "
                            "goes through the same model (docs/design.md, 'The target site's "
                            "own images')")
    model.add_argument("--model-info", action="store_true",
                       help="print the model card of --model (or the bundled model) as JSON "
                            "and exit")

    train = parser.add_argument_group("Training (group level)")
    train.add_argument("--landmarks-only", action="store_true",
                       help="only measure each site's tissue landmarks over the "
                            "participants' preprocessed brains (seconds per brain) and write "
                            "OUTPUT_DIR/site_landmarks.json, which the participant level's tissue "
                            "match then reads (--keep-subject-intensities); "
                            "without it the group level writes that file and then trains")
    train.add_argument("--from-scratch", action="store_true",
                       help="train a new network instead of fine-tuning --model (default: "
                            "the bundled model, whose network and loss terms are kept; each "
                            "of the dataset's sites starts from the known site with the most "
                            "alike tissue intensities)")
    train.add_argument("--train-steps", type=_positive_int, default=2000,
                       help="optimizer steps; training resumes from WORK_DIR/group_training")
    train.add_argument("--batch-size", type=_positive_int, default=12,
                       help="slices (patches) per step")
    train.add_argument("--patch-size", type=_positive_int, default=64,
                       help="square patch side in voxels (the model is fully convolutional)")
    train.add_argument("--learning-rate", type=float, default=2e-4, help="AdamW learning rate")
    train.add_argument("--warmup-steps", type=_non_negative_int, default=0, metavar="N",
                       help="raise the learning rate linearly from --learning-rate/N to "
                            "--learning-rate over the first N steps (0: no warm-up), for large rates "
                            "or batches; at the CPU defaults 1e-3 with 200 steps gave no "
                            "clear gain over 2e-4 (docs/model.md, sessions 36-37)")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass: less memory for "
                            "bigger batches/patches, at the cost of more compute")
    train.add_argument("--shifted-copies", type=_positive_int, default=3, metavar="N",
                       help="protocol-shifted copies of each image: the sources the model "
                            "learns to map from, since each participant is scanned at one "
                            "site only (at least 1; default: %(default)s)")

    perf = parser.add_argument_group("Performance and reproducibility")
    perf.add_argument("-w", "--work-dir", type=Path, default=Path("work"),
                      help="working directory for intermediate results; reused on rerun")
    perf.add_argument("--nprocs", "--nthreads", "--n_cpus", type=_positive_int,
                      default=os.cpu_count() or 1,
                      help="maximum number of processes/threads used at once")
    perf.add_argument("--omp-nthreads", type=_positive_int, default=None,
                      help="threads per ANTs or model step (default: --nprocs)")
    perf.add_argument("--mem-mb", "--mem_mb", type=_positive_int, default=None, metavar="MB",
                      help="upper bound of memory to use, in MB (default: no bound)")
    perf.add_argument("--use-plugin", "--use_plugin", type=Path, default=None, metavar="FILE",
                      help="YAML file naming a nipype execution plugin and its arguments "
                           "('plugin: SLURMGraph' + 'plugin_args: {...}') to run the steps "
                           "on a cluster scheduler; default: MultiProc on this machine")
    perf.add_argument("--random-seed", type=int, default=0,
                      help="seed of every random step (ANTs sampling, model noise)")
    perf.add_argument("--sloppy", action="store_true",
                      help="fast, low-quality settings for testing (affine-only, coarse grids)")
    perf.add_argument("--stop-on-first-crash", action="store_true",
                      help="stop at the first failed step instead of finishing other images")
    perf.add_argument("-v", "--verbose", action="count", default=0,
                      help="more output (-v: every step, -vv: nipype's own log)")
    return parser


def _is_within(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def parse_args(argv: list[str] | None = None) -> Settings:
    """Parse and check the command line; raise :class:`UsageError`/:class:`InputError`."""
    opts = _build_parser().parse_args(argv)
    return _check(opts)


def model_info_request(argv: list[str] | None) -> Path | None | bool:
    """``--model-info`` needs no positional arguments: return the model asked for
    (None: the bundled one), or False when ``--model-info`` was not given."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model-info", action="store_true")
    pre.add_argument("--model", type=Path)
    known, _ = pre.parse_known_args(argv)
    return (known.model if known.model else None) if known.model_info else False


def site_landmarks_for(opts: argparse.Namespace, output_dir: Path,
                       bids_dir: Path) -> Path | None:
    """The dataset's site landmarks file the participant level's tissue match reads, or
    None (the plain match onto the model's stored landmarks).

    Only a participant run with ``--target-site`` and a tissue match reads one.  By
    default (``--keep-subject-intensities`` not given) it is ``--site-landmarks`` or
    ``OUTPUT_DIR/site_landmarks.json`` when that exists; ``--keep-subject-intensities``
    requires it; ``--no-keep-subject-intensities`` never reads one.
    """
    from harmonize_bids.derivatives import site_landmarks_path

    keep = opts.keep_subject_intensities
    keep = None if keep == "auto" else keep  # None: whenever the file exists
    if keep is False and opts.site_landmarks is not None:
        raise UsageError("--site-landmarks is read by the subject-kept tissue match, which "
                         "--no-keep-subject-intensities turns off.")
    if opts.match_intensities == "none" and (keep or opts.site_landmarks is not None):
        raise UsageError("--keep-subject-intensities and --site-landmarks move the tissue "
                         "intensity match: they need --match-intensities other than 'none'.")
    if keep is False or opts.match_intensities == "none" \
            or opts.analysis_level != "participant" or opts.target_site is None:
        return None  # without a target site nothing is harmonized
    path = (opts.site_landmarks or site_landmarks_path(output_dir)).absolute()
    if path.is_file():
        return path
    if keep or opts.site_landmarks is not None:
        raise InputError(
            f"The subject-kept tissue match needs the dataset's site landmarks, and {path} does "
            f"not exist: run the participant level without --target-site (preprocessing), "
            f"then '{bids_dir} {output_dir} group --landmarks-only', then this command again "
            f"(or give --site-landmarks).")
    return None


def _check(opts: argparse.Namespace) -> Settings:
    """Cross-option checks; build the Settings."""
    bids_dir = opts.bids_dir.absolute()
    output_dir = opts.output_dir.absolute()
    work_dir = opts.work_dir.absolute()
    if not bids_dir.is_dir():
        raise InputError(f"BIDS directory not found: {bids_dir}")
    if output_dir.resolve() == bids_dir.resolve():
        raise UsageError("The output directory must not be the BIDS directory; "
                         "use e.g. <bids_dir>/derivatives/harmonize_bids.")
    if _is_within(output_dir, bids_dir) and not _is_within(output_dir, bids_dir / "derivatives"):
        raise UsageError(f"The output directory {output_dir} is inside the BIDS directory "
                         "but not under its derivatives/ folder, so a later run would read "
                         "the outputs back as input: use e.g. "
                         "<bids_dir>/derivatives/harmonize_bids.")
    if _is_within(work_dir, bids_dir):
        raise UsageError(f"The work directory {work_dir} must not be inside the BIDS "
                         "directory (the input is never written to).")
    if work_dir.resolve() == output_dir.resolve():
        raise UsageError("The work directory must not be the output directory.")
    if opts.stop_at >= opts.strength:
        raise UsageError(f"--stop-at {opts.stop_at:g} must be below --strength "
                         f"{opts.strength:g} (the chain runs from strength down to stop-at).")
    try:
        SamplerSettings(steps=opts.steps, strength=opts.strength, stop=opts.stop_at,
                        samples=opts.samples, source_guidance=opts.source_guidance)
    except ValueError as err:  # e.g. more steps than the diffusion has timesteps
        raise UsageError(f"Invalid sampler settings (--steps, --strength, --stop-at, "
                         f"--samples, --source-guidance): {err}") from None
    if opts.from_scratch and opts.model is not None:
        raise UsageError("--from-scratch trains a new network; --model names the one the "
                         "group level would start from: give one or the other.")
    if opts.model is not None and not opts.model.is_file():
        raise InputError(f"Model file not found: {opts.model}")
    site_landmarks = site_landmarks_for(opts, output_dir, bids_dir)
    if opts.mem_mb is not None and opts.mem_mb < 512:
        raise UsageError(f"--mem-mb {opts.mem_mb} is too small (at least 512).")
    omp = opts.omp_nthreads or opts.nprocs
    plugin, plugin_args = "MultiProc", {}
    if opts.use_plugin is not None:
        from harmonize_bids.utils.plugins import load_plugin_file

        plugin, plugin_args = load_plugin_file(opts.use_plugin)
    return Settings(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=opts.analysis_level,
        work_dir=work_dir,
        participant_label=clean_labels(opts.participant_label, "sub-"),
        session_label=clean_labels(opts.session_label, "ses-"),
        bids_filters=load_bids_filters(opts.bids_filter_file),
        skip_bids_validation=opts.skip_bids_validation,
        site_column=opts.site_column,
        site_from_session=opts.site_from_session,
        nprocs=opts.nprocs,
        omp_nthreads=min(omp, opts.nprocs),
        mem_mb=opts.mem_mb,
        plugin=plugin,
        plugin_args=plugin_args,
        random_seed=opts.random_seed,
        target_site=opts.target_site,
        model=opts.model.absolute() if opts.model else None,
        device=opts.device,
        steps=opts.steps,
        strength=opts.strength,
        stop_at=opts.stop_at,
        samples=opts.samples,
        source_guidance=opts.source_guidance,
        match_intensities=opts.match_intensities,
        level_slices=opts.level_slices,
        keep_target_site=opts.keep_target_site,
        site_landmarks=site_landmarks,
        landmarks_only=opts.landmarks_only,
        train_steps=opts.train_steps,
        batch_size=opts.batch_size,
        patch_size=opts.patch_size,
        learning_rate=opts.learning_rate,
        warmup_steps=opts.warmup_steps,
        from_scratch=opts.from_scratch,
        shifted_copies=opts.shifted_copies,
        gradient_checkpointing=opts.gradient_checkpointing,
        sloppy=opts.sloppy,
        verbose=opts.verbose,
        stop_on_first_crash=opts.stop_on_first_crash,
    )
