"""The scanner simulator: signal physics, protocols, artifacts, rendering, datasets."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage as ndi

from harmonize_bids.simulate import artifacts
from harmonize_bids.simulate.anatomy import deform, flip_left_right
from harmonize_bids.simulate.dataset import make_traveling_dataset
from harmonize_bids.simulate.protocols import PROTOCOLS, Protocol, get_protocol, random_protocol
from harmonize_bids.simulate.render import load_anatomy, render, render_clean
from harmonize_bids.simulate.shift import shift_real_image
from harmonize_bids.simulate.signal import ernst_angle, mprage_signal, spgr_signal
from harmonize_bids.simulate.tissues import TISSUES, three_class_map
from toys import toy_labels


def _class_means(img, dseg):
    a = np.asarray(img.dataobj, dtype=float)
    d = np.asarray(dseg.dataobj)
    return [a[d == k].mean() for k in (1, 2, 3)]


# ---------------------------------------------------------------- signal equations
def test_spgr_against_hand_value():
    # PD=1, T1=1000, TR=20, flip 90: (1 - e^-0.02) = 0.019801
    assert math.isclose(float(spgr_signal(1.0, 1000.0, 50.0, tr=20, te=0, flip_deg=90)),
                        1 - math.exp(-0.02), rel_tol=1e-9)
    # T2* decay at TE = T2*
    assert math.isclose(float(spgr_signal(1.0, 1000.0, 10.0, tr=20, te=10, flip_deg=90)),
                        (1 - math.exp(-0.02)) * math.exp(-1), rel_tol=1e-9)


def test_ernst_angle_maximizes_spgr():
    best = ernst_angle(20.0, 1000.0)
    signals = [float(spgr_signal(1, 1000.0, 1e9, tr=20, te=0, flip_deg=a))
               for a in (best - 2, best, best + 2)]
    assert signals[1] > signals[0] and signals[1] > signals[2]


def test_mprage_reduces_to_inversion_recovery():
    flip = 0.01
    s = float(mprage_signal(1.0, 1000.0, 1e9, tr=30000, ti=1000, te=0, flip_deg=flip,
                            echo_spacing=0.001, n_readout=2, inversion_efficiency=0.96))
    expected = 1 - 1.96 * math.exp(-1.0)   # full recovery, then inversion
    assert math.isclose(s / math.sin(math.radians(flip)), expected, rel_tol=1e-4)


def test_mprage_timing_checked():
    with pytest.raises(ValueError):
        mprage_signal(1.0, 1000.0, 50.0, tr=1000, ti=100, te=3, flip_deg=9,
                      echo_spacing=7, n_readout=176)


def test_tissue_contrast_follows_physics():
    t = TISSUES
    for name in ("wm", "gm", "csf"):
        assert t[name].t1(3.0) >= t[name].t1(1.5)       # T1 lengthens with field
        assert t[name].t2s(3.0) <= t[name].t2s(1.5)     # T2* shortens
    wm, gm, csf = (t[n] for n in ("wm", "gm", "csf"))
    for proto in PROTOCOLS.values():
        from harmonize_bids.simulate.shift import target_tissue_signals
        s_csf, s_gm, s_wm = target_tissue_signals(proto)
        assert s_wm > s_gm > s_csf, proto.name          # T1 weighting everywhere
    # the same SPGR at 3 T gives less WM signal (longer T1, less recovery per TR)
    args = dict(tr=24, te=5, flip_deg=35)
    assert spgr_signal(wm.pd, wm.t1(3.0), wm.t2s(3.0), **args) < \
        spgr_signal(wm.pd, wm.t1(1.5), wm.t2s(1.5), **args)
    # same MPRAGE timing: at 3 T tissues recover less after inversion (longer T1)
    kw = dict(tr=2300, ti=900, te=3, flip_deg=9, echo_spacing=7.1, n_readout=176)
    mz = {f: float(mprage_signal(1.0, wm.t1(f), 1e9, **kw)) for f in (1.5, 3.0)}
    assert mz[3.0] < mz[1.5]


# ---------------------------------------------------------------- protocols
def test_protocol_json_roundtrip_and_validation(tmp_path):
    p = PROTOCOLS["siemens3tmprage"]
    path = tmp_path / "p.json"
    p.to_json(path)
    assert Protocol.from_file(path) == p
    with pytest.raises(ValueError, match="unknown protocol fields"):
        Protocol.from_dict({**p.to_dict(), "colour": "blue"})
    with pytest.raises(ValueError):
        Protocol("bad", "mprage", 3.0, tr=2000, te=3, flip_deg=9)  # no TI / readout
    with pytest.raises(KeyError, match="known"):
        get_protocol("nope")
    side = p.bids_sidecar()
    assert side["InversionTime"] == 0.9 and side["MagneticFieldStrength"] == 3.0


def test_random_protocols_are_valid_and_seeded():
    a = random_protocol(np.random.default_rng(3))
    b = random_protocol(np.random.default_rng(3))
    assert a == b
    for seed in range(20):
        p = random_protocol(np.random.default_rng(seed))
        assert p.field_strength in (1.5, 3.0) and p.snr > 0


# ---------------------------------------------------------------- artifacts
def test_artifacts_known_behaviour():
    rng = np.random.default_rng(0)
    bias = artifacts.bias_field((20, 20, 20), rng, strength=0.2)
    assert bias.min() > 0 and abs(np.log(bias).std() - 0.2) < 0.02
    noise = artifacts.rician_noise(np.zeros((60, 60, 60)), 2.0, rng)
    assert abs(noise.mean() - 2.0 * math.sqrt(math.pi / 2)) < 0.05   # Rayleigh mean
    img = rng.uniform(0, 1, (10, 10, 10))
    assert artifacts.blur_to_resolution(img, (1, 1, 1), (1, 1, 1)) is img
    blurred = artifacts.blur_to_resolution(img, (1, 1, 1), (1, 1, 5))
    assert np.abs(np.diff(blurred, axis=2)).mean() < np.abs(np.diff(blurred, axis=0)).mean()
    stored = artifacts.vendor_mapping(img * 2, 1.0, gain=100, gamma=1.0, offset=0,
                                      clip_percentile=99.0, dtype="uint8")
    assert stored.dtype == np.uint8 and stored.max() <= np.percentile(img * 200, 99.0) + 1


# ---------------------------------------------------------------- rendering
def test_render_toy_head_contrast_and_truth():
    anat = toy_labels()
    for proto in PROTOCOLS.values():
        img, mask, dseg = render(anat, proto, np.random.default_rng(0), spacing_mm=2.0)
        csf, gm, wm = _class_means(img, dseg)
        assert wm > gm > csf, proto.name
        assert img.get_data_dtype() == np.dtype(proto.dtype)
    assert np.array_equal(np.asarray(mask.dataobj) > 0, (anat.labels > 0) & (anat.labels < 500))
    assert np.array_equal(np.asarray(dseg.dataobj), three_class_map(anat.labels))


def test_render_is_deterministic_and_sites_differ():
    anat = toy_labels()
    p = PROTOCOLS["siemens3tmprage"]
    a = np.asarray(render(anat, p, np.random.default_rng(5))[0].dataobj)
    b = np.asarray(render(anat, p, np.random.default_rng(5))[0].dataobj)
    c = np.asarray(render(anat, PROTOCOLS["ge15tspgr"], np.random.default_rng(5))[0].dataobj)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_render_coarser_grid():
    img, mask, _ = render(toy_labels(), PROTOCOLS["ge15tspgr"], np.random.default_rng(0),
                          spacing_mm=4.0)
    assert img.shape == (20, 24, 20)
    assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 4.0)



def test_texture_belongs_to_the_subject_not_the_scanner():
    """Within-tissue texture has the same pattern under two protocols (same subject),
    and another pattern for another subject; bias and noise stay the acquisition's."""
    import dataclasses

    def white_matter_texture(anatomy, protocol, seed):
        quiet = dataclasses.replace(protocol, texture_std=0.1, bias_strength=0.0)
        r = render_clean(anatomy, quiet, np.random.default_rng(seed), spacing_mm=2.0)
        wm = (r.dseg == 3) & (ndi.binary_erosion(r.dseg == 3, iterations=1))
        log = np.log(r.clean[wm])
        return log - log.mean()

    subject = dataclasses.replace(toy_labels(), texture_seed=1)
    other = dataclasses.replace(toy_labels(), texture_seed=2)
    a = white_matter_texture(subject, PROTOCOLS["siemens3tmprage"], 0)
    b = white_matter_texture(subject, PROTOCOLS["ge15tspgr"], 1)
    c = white_matter_texture(other, PROTOCOLS["ge15tspgr"], 1)
    assert a.std() > 0.01
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.5

# ---------------------------------------------------------------- anatomy
def test_flip_swaps_hemispheres():
    anat = toy_labels()
    flipped = flip_left_right(anat)
    assert (anat.labels == 2).sum() == (flipped.labels == 41).sum()
    x_left = np.nonzero(flipped.labels == 2)[0].mean()
    assert x_left < anat.labels.shape[0] / 2  # left WM still on the left side


def test_deform_keeps_labels_and_volumes():
    anat = toy_labels()
    out = deform(anat, np.random.default_rng(1), max_displacement_mm=3)
    again = deform(anat, np.random.default_rng(1), max_displacement_mm=3)
    assert np.array_equal(out.labels, again.labels)
    assert set(np.unique(out.labels)) <= set(np.unique(anat.labels))
    assert not np.array_equal(out.labels, anat.labels)
    for lab in (2, 3, 24):
        assert abs((out.labels == lab).sum() / (anat.labels == lab).sum() - 1) < 0.25


# ---------------------------------------------------------------- real-image shift
def test_shift_moves_contrast_towards_target():
    anat = toy_labels()
    src = PROTOCOLS["siemens15tlowsnr"]
    img, mask, dseg = render(anat, src, np.random.default_rng(0))
    tissue = np.asarray(dseg.dataobj)
    target = PROTOCOLS["ge15tspgr"]
    shifted = shift_real_image(np.asarray(img.dataobj), np.asarray(mask.dataobj), target,
                               np.random.default_rng(1), spacing_mm=(2, 2, 2),
                               tissue_map=tissue, add_noise=False)
    ref = np.asarray(render(anat, target, np.random.default_rng(0))[0].dataobj, float)
    a = np.asarray(img.dataobj, float)
    ratio = lambda x: x[tissue == 2].mean() / x[tissue == 3].mean()  # noqa: E731
    assert abs(ratio(shifted.astype(float)) - ratio(ref)) < abs(ratio(a) - ratio(ref))
    assert shifted.dtype == np.dtype(target.dtype)


# ---------------------------------------------------------------- datasets
def test_dataset_layout_and_truth(toy_dataset):
    rows = (toy_dataset / "participants.tsv").read_text().splitlines()
    assert rows[0] == "participant_id\tsite\tanatomy" and len(rows) == 1 + 3 * 2
    assert rows[1].startswith("sub-a01s01\tsiemens3tmprage\ttoy_0")
    assert rows[5].split("\t")[2] == "toy_0-v2"   # third anatomy: a deformed variant
    truth = toy_dataset / "derivatives/simulation-truth/sub-a02s02/anat"
    for name in ("desc-brain_mask.nii.gz", "dseg.nii.gz", "desc-rescan_T1w.nii.gz"):
        assert (truth / f"sub-a02s02_{name}").is_file()
    side = json.loads((toy_dataset / "sub-a02s02/anat/sub-a02s02_T1w.json").read_text())
    assert side["Manufacturer"] == "GE" and side["SimulatedProtocol"] == "ge15tspgr"
    # the same anatomy at two sites shares one grid
    a = nb.load(toy_dataset / "sub-a01s01/anat/sub-a01s01_T1w.nii.gz")
    b = nb.load(toy_dataset / "sub-a01s02/anat/sub-a01s02_T1w.nii.gz")
    assert a.shape == b.shape and np.allclose(a.affine, b.affine)


def test_dataset_is_bids_valid(toy_dataset):
    exe = shutil.which("bids-validator-deno")
    for root in (toy_dataset, toy_dataset / "derivatives/simulation-truth"):
        proc = subprocess.run([exe, "--format", "json", str(root)], capture_output=True, text=True)
        errors = [i for i in json.loads(proc.stdout)["issues"]["issues"]
                  if i["severity"] == "error"]
        assert errors == [], errors


def test_dataset_is_deterministic_and_never_half_written(labels_dir, toy_dataset, tmp_path):
    again = make_traveling_dataset(labels_dir, tmp_path / "again",
                                   [PROTOCOLS["siemens3tmprage"], PROTOCOLS["ge15tspgr"]],
                                   n_anatomies=3, resolution_mm=2.0, seed=4, rescan=True,
                                   progress=lambda m: None)
    for rel in ("sub-a03s02/anat/sub-a03s02_T1w.nii.gz",
                "derivatives/simulation-truth/sub-a03s02/anat/sub-a03s02_desc-rescan_T1w.nii.gz"):
        assert np.array_equal(np.asarray(nb.load(toy_dataset / rel).dataobj),
                              np.asarray(nb.load(again / rel).dataobj))
    with pytest.raises(FileExistsError):
        make_traveling_dataset(labels_dir, again, [PROTOCOLS["ge15tspgr"]], n_anatomies=1)
    # a failure midway (bad protocol name) leaves nothing behind
    bad = Protocol("bad-name", "spgr", 1.5, tr=20, te=4, flip_deg=30)
    with pytest.raises(ValueError):
        make_traveling_dataset(labels_dir, tmp_path / "bad", [bad], n_anatomies=1)
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["again"]


def test_simulate_cli(labels_dir, tmp_path, capsys):
    from harmonize_bids.cli.simulate import main

    assert main(["--list-protocols"]) == 0
    assert "clinical15tthick" in capsys.readouterr().out
    assert main([str(labels_dir), str(tmp_path / "x"), "--protocols", "nope"]) == 64
    assert main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 66
    assert main([str(labels_dir), str(tmp_path / "ok"), "--protocols",
                 "ge15tspgr,clinical15tthick", "--n-anatomies", "1", "--resolution", "4"]) == 0
    assert (tmp_path / "ok/sub-a01s02/anat/sub-a01s02_T1w.nii.gz").is_file()


def test_real_label_map_renders_like_a_head(shared_data):
    anat = load_anatomy(shared_data / "synthseg-labels" / "training_seg_01.nii.gz")
    img, mask, dseg = render(anat, PROTOCOLS["siemens3tmprage"], np.random.default_rng(0),
                             spacing_mm=2.0)
    csf, gm, wm = _class_means(img, dseg)
    assert wm > gm > csf
    volume_ml = (np.asarray(mask.dataobj) > 0).sum() * 8 / 1000
    assert 1000 < volume_ml < 2200


def test_random_protocols_are_always_physically_possible():
    """Every random MPRAGE fits its readout train between inversion and TR."""
    from harmonize_bids.simulate.protocols import random_protocol
    from harmonize_bids.simulate.signal import mprage_signal

    rng = np.random.default_rng(7)
    for k in range(300):
        p = random_protocol(rng, f"r{k}")
        if p.sequence == "mprage":
            mprage_signal(1.0, np.array([800.0]), np.inf, tr=p.tr, ti=p.ti, te=0.0,
                          flip_deg=p.flip_deg, echo_spacing=p.echo_spacing,
                          n_readout=p.n_readout)
