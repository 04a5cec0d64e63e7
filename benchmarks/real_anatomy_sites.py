#!/usr/bin/env python
"""Harmonization of real anatomies between named scanners: held-out IXI brains as
traveling subjects ("track C" beside ``quality_vs_peers.py``'s A and B).

Track A renders 4 held-out SynthSeg label maps (deformed variants add texture, not
people), so with folds grouped by subject its site predictability rests on 4 people
and one subject moves a fold's accuracy by 0.25 (session 31,
``results/site_predictability_rescored_session31_protocols.md``).  Here every
subject is a different real person: ``--n-subjects`` IXI participants the bundled
model never trained on (after the first 34: 30 trained, 4 used by track B),
preprocessed by the participant level, each re-rendered with
:func:`harmonize_bids.simulate.shift.shift_real_image` under the named protocols (the
model's simulated sites and the two it never saw), from one fixed tissue map per
brain and a random bias field and noise per render; a second render at the target is
the rescan. Every render is N4-corrected as the app does. The truth is the render
at the target, tissue Dice is scored against the tissue map the renders come from.

Methods: no harmonization; Nyul, WhiteStripe, z-score, ANTs histogram matching
(references: the target renders of the other subjects, as in track A); the
subject-kept whole-brain quantile match; ours with the app's defaults (2 chains x 5
steps, slice levelling, vigintile match) and with the subject-kept match, placed among
the dataset's own target-site scans (as the app does when it holds 3 or more; each
subject's own truth left out) or on the model's stored target landmarks; onto the
mean of the dataset's target-site scans without the subject part (what a scan from a
site the dataset holds too few scans of gets, session 32); and as sampled
(slice-levelled, no intensity match).  Site
predictability is cross-validated with folds grouped by subject, and ours is paired
with every peer by resampling the subjects (``site_predictability_paired``): 95%
intervals of the difference that a handful of people could not give.

    python benchmarks/real_anatomy_sites.py --target ge15tspgr --n-subjects 12 \\
        --ixi-derivatives /tmp/hb_c/ixi_derivatives --results F.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality_vs_peers import (IXI, SUBJECT, UNSEEN, log, matched, n4_array,  # noqa: E402
                              peer_methods)
from results_file import write_results  # noqa: E402
from site_predictability_paired import paired_difference  # noqa: E402

TRAINED = 30  # IXI participants (sorted) 0-29 trained the bundled model (docs/bundled-model.md)
FIRST_HELD_OUT = 34  # 30-33 are track B's
SEED = 31
BRAINQ = "whole-brain quantile match, subject kept"


def held_out_participants(everyone: list[str], n: int,
                          chosen: list[str] | None = None) -> list[str]:
    """The first ``n`` IXI labels after :data:`FIRST_HELD_OUT` in sorted order, or the
    ``chosen`` ones after checking that the model never trained on them.

    >>> everyone = [f"IXI{k:03d}" for k in range(40)]
    >>> held_out_participants(everyone, 3)
    ['IXI034', 'IXI035', 'IXI036']
    >>> held_out_participants(everyone, 3, ["IXI031", "IXI039"])
    ['IXI031', 'IXI039']
    >>> held_out_participants(everyone, 3, ["IXI002"])
    Traceback (most recent call last):
    ValueError: the bundled model trained on ['IXI002'] (the first 30 IXI participants)
    """
    ordered = sorted(everyone)
    if chosen is None:
        return ordered[FIRST_HELD_OUT:FIRST_HELD_OUT + n]
    trained = [c for c in chosen if c not in ordered[TRAINED:]]
    if trained:
        raise ValueError(f"the bundled model trained on {trained} (the first {TRAINED} IXI "
                         "participants)")
    return list(chosen)


def render(real: np.ndarray, mask: np.ndarray, tissue: np.ndarray, protocol: str,
           seed: tuple[int, ...], voxel_mm: float) -> np.ndarray:
    """``real`` re-rendered under ``protocol`` (its own bias field and noise from
    ``seed``), N4-corrected and brain-normalized as the app's harmonizer sees it."""
    from harmonize_bids.simulate.protocols import PROTOCOLS
    from harmonize_bids.simulate.shift import shift_real_image
    from harmonize_bids.training.data import normalize_brain

    shifted = shift_real_image(real, mask, PROTOCOLS[protocol], np.random.default_rng(seed),
                               spacing_mm=(voxel_mm,) * 3, tissue_map=tissue)
    return normalize_brain(n4_array(shifted, voxel_mm, mask), mask)


def cache_stems(subjects: list[str]) -> dict[str, str]:
    """Each subject's cache file stem, ``SUB_seedI``: ``I`` (its place among the chosen
    subjects, sorted) seeds its renders, so a cached render is only reused for the
    same seed.

    >>> cache_stems(["sub-IXI161", "sub-IXI160"])
    {'sub-IXI160': 'sub-IXI160_seed0', 'sub-IXI161': 'sub-IXI161_seed1'}
    """
    return {sub: f"{sub}_seed{i}" for i, sub in enumerate(sorted(subjects))}


def renders(real: dict, masks: dict, protocols: list[str], target: str, voxel_mm: float,
            cache: Path) -> tuple[dict, dict, dict]:
    """({(subject, protocol): image}, {subject: rescan at target}, {subject: tissue map}),
    cached in ``cache`` (one ``.npz`` per subject, :func:`cache_stems`) so other targets
    reuse them."""
    from harmonize_bids.metrics import tissue_segmentation

    images, rescans, tissues = {}, {}, {}
    cache.mkdir(parents=True, exist_ok=True)
    for i, (sub, stem) in enumerate(sorted(cache_stems(list(real)).items())):
        path = cache / f"{stem}.npz"
        stored = dict(np.load(path)) if path.is_file() else {}
        known = set(stored)
        if "tissue" not in stored:
            stored["tissue"] = tissue_segmentation(real[sub], masks[sub], 3, random_state=0)
        for k, name in enumerate(protocols):
            if name not in stored:
                stored[name] = render(real[sub], masks[sub], stored["tissue"], name,
                                      (SEED, i, k), voxel_mm)
            images[sub, name] = stored[name]
        if f"rescan_{target}" not in stored:
            stored[f"rescan_{target}"] = render(real[sub], masks[sub], stored["tissue"],
                                                target, (SEED, i, 100 + protocols.index(target)),
                                                voxel_mm)
        rescans[sub], tissues[sub] = stored[f"rescan_{target}"], stored["tissue"]
        if set(stored) != known:
            np.savez_compressed(path, **stored)
        log(f"{sub}: renders ready")
    return images, rescans, tissues


def cached_renders(cache: Path) -> tuple[dict, dict]:
    """What :func:`renders` left in ``cache``, for other benchmarks: ({subject:
    {protocol: normalized brain}}, {subject: brain mask}); rescans and chains left out."""
    volumes, masks = {}, {}
    for path in sorted(cache.glob("sub-*_seed*.npz")):
        stored = np.load(path)
        subject = path.stem.split("_seed")[0]
        masks[subject] = stored["tissue"] > 0
        volumes[subject] = {k: stored[k] for k in stored.files
                            if k != "tissue" and not k.startswith("rescan_")}
    return volumes, masks


def quantile_peer(images: dict, masks: dict, sources: list[str], target: str):
    """``f(subject, source) -> image``: the subject-kept whole-brain quantile match onto
    the other subjects' target renders (``quality_vs_peers.brain_quantile_peer``)."""
    from harmonize_bids.brain_quantiles import (brain_quantiles, match_brain_quantiles,
                                                standardized_quantiles)
    from harmonize_bids.site_intensity import scan_statistics

    quantiles = {key: brain_quantiles(img, masks[key[0]]) for key, img in images.items()}
    subjects = sorted({s for s, _ in images})
    sites = {p: scan_statistics([quantiles[s, p] for s in subjects]) for p in sources}

    def harmonize(sub: str, source: str) -> np.ndarray:
        reference = scan_statistics([quantiles[s, target] for s in subjects if s != sub])
        goal = standardized_quantiles(reference, sites[source], quantiles[sub, source])
        return match_brain_quantiles(images[sub, source], masks[sub], goal)

    return harmonize


def landmark_statistics(landmarks: dict, leave_out: tuple[str, str] | None = None):
    """``site_intensity.site_statistics`` of the renders' tissue ``landmarks``
    (``{(subject, site): landmarks}``, as ``quality_vs_peers.dataset_statistics``),
    without the ``leave_out`` render (a subject's own truth at the target)."""
    from harmonize_bids.site_intensity import site_statistics

    by_site: dict[str, list] = {}
    for key, row in landmarks.items():
        if key != leave_out:
            by_site.setdefault(key[1], []).append(row)
    return site_statistics(by_site)


def dataset_reference_match(image, source_image, mask, model, target: str,
                            source: str | None, statistics) -> np.ndarray:
    """The vigintile match placed among the dataset's own scans of the target site, as
    the app does when the dataset holds 3 or more of them (``scan_target_landmarks(...,
    target_site=)``, sidecar ``TissueIntensityReference``): subject-kept for a ``source``
    site the dataset holds; onto their mean for ``source`` None (a scanner the dataset
    holds too few scans of)."""
    from harmonize_bids.site_intensity import (SCHEMES, match_landmarks, scan_target_landmarks,
                                               target_landmarks, tissue_landmarks)

    own = tissue_landmarks(source_image, mask, SCHEMES["vigintiles"])
    choice = scan_target_landmarks(target_landmarks(model.config, target, "vigintiles"),
                                   statistics, source, own, target_site=target)
    if (choice.why_not_kept is None) != bool(source):
        raise RuntimeError(f"expected the subject part {'kept' if source else 'dropped'}: "
                           f"{choice}")
    return match_landmarks(image, mask, choice.landmarks)


def reference_weight_of(model, target: str, statistics) -> float:
    """How far the dataset's target scans move the reference from the model's landmarks
    (``site_intensity.target_site_weight``; 0: the model's landmarks stay)."""
    from harmonize_bids.site_intensity import target_landmarks, target_site_weight

    stored = target_landmarks(model.config, target, "vigintiles")
    return target_site_weight(stored, statistics, target) or 0.0


def main() -> None:
    from harmonize_bids import metrics
    from harmonize_bids.diffusion.checkpoint import bundled_model, file_sha256, load_model
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.diffusion.volume import harmonize_volume
    from harmonize_bids.postprocess import level_slices
    from harmonize_bids.simulate.protocols import PROTOCOLS
    from harmonize_bids.training.group import load_training_volumes
    from harmonize_bids.utils.bids import T1wRecord
    from harmonize_bids.utils.cpu import configure_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--target", required=True)
    parser.add_argument("--n-subjects", type=int, default=12)
    parser.add_argument("--participants", nargs="+", default=None,
                        help="IXI labels to use instead (e.g. IXI146); they must be held out")
    parser.add_argument("--ixi-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "ixi-hh-t1w-2mm")
    parser.add_argument("--ixi-derivatives", type=Path, required=True,
                        help="participant-level outputs of the held-out IXI participants")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hb_c/renders"))
    parser.add_argument("--boot", type=int, default=200, help="subject resamples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    configure_cpu(args.threads)
    t_start = time.monotonic()
    model_file = args.model or bundled_model()
    model, _ = load_model(model_file)
    if args.target not in model.config.sites or args.target not in PROTOCOLS:
        parser.error(f"--target must be a simulated site of the model: "
                     f"{[s for s in model.config.sites if s in PROTOCOLS]}")
    voxel = model.config.voxel_mm
    simulated = [s for s in model.config.sites if s in PROTOCOLS]
    protocols = simulated + UNSEEN
    sources = [p for p in protocols if p != args.target]

    everyone = [r.split("\t")[0][4:] for r in
                (args.ixi_dir / "participants.tsv").read_text().splitlines()[1:] if r.strip()]
    try:
        labels = held_out_participants(everyone, args.n_subjects, args.participants)
    except ValueError as err:
        parser.error(str(err))
    records = [T1wRecord(path=Path(f"sub-{s}_T1w.nii.gz"), entities={"subject": s},
                         site=IXI, site_source="benchmark") for s in labels]
    volumes, masks, used = load_training_volumes(records, args.ixi_derivatives, voxel)
    if len(used) < 4:
        parser.error(f"only {len(used)} of {labels} are preprocessed in {args.ixi_derivatives}")
    real = {s: volumes[s][IXI] for s in used}
    images, rescans, tissues = renders(real, masks, protocols, args.target, voxel, args.cache)
    stems, model_hash = cache_stems(used), file_sha256(model_file)[:12]

    peers = peer_methods()
    brainq = quantile_peer(images, masks, sources, args.target)
    from harmonize_bids.site_intensity import SCHEMES, tissue_landmarks

    landmarks = {key: tissue_landmarks(img, masks[key[0]], SCHEMES["vigintiles"])
                 for key, img in images.items()}
    statistics = landmark_statistics(landmarks)
    sampler = SamplerSettings()
    target_index = model.config.site_index(args.target)
    ours = ("ours (default)", "ours + subject-kept match, dataset's target scans",
            "ours + subject-kept match, model's target landmarks",
            "ours as sampled (--match-intensities none)",
            "ours + mean of the dataset's target scans (source site with too few scans)")
    methods = ["no harmonization", *peers, BRAINQ, *ours]
    outputs = {m: {} for m in methods}
    weights = []  # each subject's dataset-reference weight (its own truth left out)
    seconds = {m: 0.0 for m in methods}
    for sub in used:
        others = [(images[o, args.target], masks[o]) for o in used if o != sub]
        k = used.index(sub)
        # the chains' output is kept (per model and target) so a rerun scores without them
        ours_cache = args.cache / f"ours_{model_hash}_{args.target}_{stems[sub]}.npz"
        sampled = dict(np.load(ours_cache)) if ours_cache.is_file() else {}
        own_truth_out = landmark_statistics(landmarks, leave_out=(sub, args.target))
        weights.append(reference_weight_of(model, args.target, own_truth_out))
        for source in sources:
            src, mask = images[sub, source], masks[sub]
            outputs["no harmonization"][sub, source] = src
            for name, fn in peers.items():
                refs = others if name.startswith("Nyul") else [others[k % len(others)]]
                t0 = time.monotonic()
                outputs[name][sub, source] = fn(src, mask, refs)
                seconds[name] += time.monotonic() - t0
            t0 = time.monotonic()
            outputs[BRAINQ][sub, source] = brainq(sub, source)
            seconds[BRAINQ] += time.monotonic() - t0
            if source in sampled:
                levelled, spent = sampled[source], float(sampled[f"{source}_seconds"])
            else:
                t0 = time.monotonic()
                raw = harmonize_volume(model, src, mask, target_index, sampler, seed=0,
                                       level=False)
                levelled = level_slices(raw, src, mask)
                spent = time.monotonic() - t0
                sampled[source], sampled[f"{source}_seconds"] = levelled, np.array(spent)
                np.savez_compressed(ours_cache, **sampled)
            for name in ours:
                t1 = time.monotonic()
                outputs[name][sub, source] = (
                    dataset_reference_match(levelled, src, mask, model, args.target, source,
                                            own_truth_out)
                    if name == ours[1] else
                    dataset_reference_match(levelled, src, mask, model, args.target, None,
                                            own_truth_out)
                    if name == ours[4] else levelled if name == ours[3] else
                    matched(levelled, mask, model, args.target,
                            "vigintiles" + (SUBJECT if name == ours[2] else ""), src, source,
                            statistics))
                seconds[name] += spent + time.monotonic() - t1
        log(f"{sub} done ({(time.monotonic() - t_start) / 60:.0f} min)")

    keys = [(s, p) for s in used for p in sources]
    n = len(keys)
    ceiling = [metrics.compare(rescans[s], images[s, args.target], masks[s], tissues[s])
               for s in used]
    features = {m: metrics.site_histogram_features([outputs[m][k] for k in keys],
                                                   [masks[k[0]] for k in keys])
                for m in methods}
    site_of, subject_of = [k[1] for k in keys], [k[0] for k in keys]
    rows = ["| method | SSIM | PSNR (dB) | tissue Dice | site pred. [lowest-highest fold] "
            f"(chance {1 / len(sources):.2f}) | ours (default) minus it [95%] | "
            "ours subject-kept (dataset's target scans) minus it [95%] | s/vol |",
            "|---|---|---|---|---|---|---|---|"]
    per_pair = ["| method | " + " | ".join(f"{p} → {args.target}" for p in sources) + " |",
                "|---|" + "---|" * len(sources)]
    mean_ceiling = {m: np.mean([c[m] for c in ceiling]) for m in ("ssim", "psnr", "tissue_dice")}
    rows.append(f"| rescan at the target (ceiling) | {mean_ceiling['ssim']:.3f} | "
                f"{mean_ceiling['psnr']:.2f} | {mean_ceiling['tissue_dice']:.3f} | | | | |")
    for m in methods:
        scores = {k: metrics.compare(outputs[m][k], images[k[0], args.target], masks[k[0]],
                                     tissues[k[0]]) for k in keys}
        mean = {q: np.mean([scores[k][q] for k in keys]) for q in ("ssim", "psnr", "tissue_dice")}
        folds = metrics.site_fold_accuracies(features[m], site_of, groups=subject_of)
        pred = np.mean([f.mean() for f in folds])
        low, high = min(f.min() for f in folds), max(f.max() for f in folds)
        diffs = []
        for mine in ours[:2]:
            if m == mine:
                diffs.append("")
                continue
            res = paired_difference(features[m], features[mine], site_of, subject_of,
                                    n_boot=args.boot, n_repeats=2)
            diffs.append(f"{res['difference']:+.2f} [{res['low']:+.2f}, {res['high']:+.2f}]")
        rows.append(f"| {m} | {mean['ssim']:.3f} | {mean['psnr']:.2f} | "
                    f"{mean['tissue_dice']:.3f} | {pred:.2f} [{low:.2f}-{high:.2f}] | "
                    f"{diffs[0]} | {diffs[1]} | "
                    f"{seconds[m] / n:.2f} |")
        per_pair.append(f"| {m} | " + " | ".join(
            "{:.3f} / {:.1f} / {:.3f}".format(*(np.mean([scores[s, p][q] for s in used])
                                                for q in ("ssim", "psnr", "tissue_dice")))
            for p in sources) + " |")
        log(f"{m} scored")
    text = "\n".join(rows + ["", "Per source (SSIM / PSNR / tissue Dice, mean over subjects):",
                             "", *per_pair])
    details = (f"model `{model_file.name}` (sha256 {model_hash}), "
               f"{args.threads} threads; {len(used)} held-out IXI participants {used} re-rendered "
               f"under {sources} -> `{args.target}` ({n} images; truth: the render at the "
               f"target; rescan: a second one); ours: {sampler.metadata()}, slice levelling; "
               "site predictability with folds grouped by subject (5 folds x 10 repeats), "
               f"differences by {args.boot} subject resamples (negative: ours is less "
               f"predictable); the dataset's target scans moved the reference from the "
               f"model's landmarks by a weight of {min(weights):.2f}-{max(weights):.2f} "
               f"(site_intensity.reference_weight); "
               f"{(time.monotonic() - t_start) / 60:.0f} min in all.")
    write_results(args.results, f"Real anatomies between named scanners -> {args.target}",
                  sys.argv, details, text)


if __name__ == "__main__":
    main()
