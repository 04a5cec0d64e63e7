"""Workflow construction (no ANTs run): graph shape and node names."""
from __future__ import annotations

from nipype.interfaces.base import isdefined

from harmonize_bids.utils import bids as bu
from harmonize_bids.workflows.anatomical import AntsSettings, init_anat_preproc_wf
from harmonize_bids.workflows.base import init_harmonize_bids_wf, workflow_name


def test_anat_preproc_wf_nodes():
    wf = init_anat_preproc_wf(omp_nthreads=2, sloppy=False, random_seed=3)
    names = set(wf.list_node_names())
    for expected in ("reorient", "n4", "brain_extraction_wf.reg_head_affine", "brain_extraction_wf.reg_head_syn",
                     "brain_extraction_wf.warp_prob", "brain_extraction_wf.refine_mask",
                     "register_template_wf.reg_brain", "register_template_wf.normalize"):
        assert expected in names
    reg = wf.get_node("register_template_wf").get_node("reg_brain")
    assert reg.inputs.random_seed == 3 and reg.inputs.transform == "SyN"
    assert reg.n_procs == 2
    sloppy = set(init_anat_preproc_wf(omp_nthreads=1, sloppy=True, random_seed=0).list_node_names())
    assert "brain_extraction_wf.reg_head_syn" not in sloppy


def test_sidecars_and_boilerplate_name_the_registration_that_ran():
    """--sloppy registers affine only: the transforms' sidecars and the methods text
    must not claim SyN."""
    from harmonize_bids.workflows.outputs import init_ds_anat_wf

    for sloppy, transform in ((False, "Affine + SyN"), (True, "Affine")):
        ds = init_ds_anat_wf(output_dir="/out", source_entities={"subject": "01"}, site="a",
                             random_seed=3, registration=AntsSettings.for_run(sloppy).registration,
                             sloppy=sloppy)
        meta = ds.get_node("ds_t1w2std_xfm").inputs.metadata
        assert meta["RegistrationTransform"] == transform and meta["Sloppy"] is sloppy
        desc = init_anat_preproc_wf(omp_nthreads=1, sloppy=sloppy, random_seed=0).__desc__
        assert ("--sloppy" in desc) is sloppy and ("SyN" in desc) is not sloppy


def test_second_n4_is_fitted_on_the_extracted_brain():
    """The preprocessed head and the brain that is registered come from the N4 pass
    whose field is fitted inside the brain mask, run on the reoriented raw image."""
    wf = init_anat_preproc_wf(omp_nthreads=1, sloppy=True, random_seed=0)
    graph = wf._create_flat_graph()
    by_name = {node.fullname.split(".", 1)[1]: node for node in graph.nodes}
    n4_brain = by_name["n4_brain"]
    sources = {(u.fullname.split(".", 1)[1], v.fullname.split(".", 1)[1])
               for u, v in graph.edges}
    assert ("reorient", "n4_brain") in sources
    assert ("brain_extraction_wf.outputnode", "n4_brain") in sources
    assert ("mask_brain", "register_template_wf.inputnode") in sources
    assert ("n4_brain", "outputnode") in sources and ("n4", "outputnode") not in sources
    assert n4_brain.inputs.iterations == list(AntsSettings.for_run(True).n4_iterations)
    assert "inside the brain mask" in wf.__desc__


def test_head_wide_n4_only_when_switched_off(monkeypatch):
    """With ``n4_in_brain`` off (the pre-session-20 pipeline) the head-wide N4 feeds the
    outputs and the registration, and the methods text does not claim a second pass."""
    import dataclasses

    sloppy = AntsSettings.for_run(True)
    monkeypatch.setattr(AntsSettings, "for_run", classmethod(
        lambda cls, s: dataclasses.replace(sloppy, n4_in_brain=False)))
    wf = init_anat_preproc_wf(omp_nthreads=1, sloppy=True, random_seed=0)
    graph = wf._create_flat_graph()
    edges = {(u.fullname.split(".", 1)[1], v.fullname.split(".", 1)[1]) for u, v in graph.edges}
    assert "n4_brain" not in set(wf.list_node_names())
    assert ("n4", "outputnode") in edges
    assert ("brain_extraction_wf.outputnode", "register_template_wf.inputnode") in edges
    assert "inside the brain mask" not in wf.__desc__


def test_sloppy_settings_are_cheaper():
    fast, full = AntsSettings.for_run(True), AntsSettings.for_run(False)
    assert fast.transform == "Affine" and full.transform == "SyN"
    assert fast.registration_mm > full.registration_mm


def test_top_level_has_one_branch_per_image(synthetic_bids, tmp_path):
    layout = bu.load_layout(synthetic_bids)
    records = bu.resolve_sites(layout, bu.collect_t1w(layout))
    wf = init_harmonize_bids_wf(records=records, output_dir=tmp_path, omp_nthreads=1,
                                sloppy=True, random_seed=0)
    branches = {n.split(".")[0] for n in wf.list_node_names()}
    assert branches == {workflow_name(r) for r in records} == {
        "sub_01_wf", "sub_02_wf", "sub_03_wf"}
    sink = wf.get_node("sub_01_wf").get_node("ds_anat_wf").get_node("ds_t1w2std_xfm")
    assert sink.inputs.metadata["Sloppy"] is True  # --sloppy reaches the sidecars
    assert sink.inputs.metadata["RegistrationTransform"] == "Affine"


def test_harmonize_options_reach_the_harmonize_node(synthetic_bids, tmp_path):
    """--no-level-slices, the landmark scheme and every sampler setting end up on the nipype
    node that runs the model."""
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.workflows.base import HarmonizeOptions

    layout = bu.load_layout(synthetic_bids)
    records = bu.resolve_sites(layout, bu.collect_t1w(layout))[:1]
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")  # the node only checks that the file exists
    for level in (True, False):
        options = HarmonizeOptions(model_file=model, target_site="siteB",  # sub-01 is at siteA
                                   sampler=SamplerSettings(steps=3, source_guidance=0.5),
                                   match_intensities="deciles",
                                   level_slices=level)
        wf = init_harmonize_bids_wf(records=records, output_dir=tmp_path, omp_nthreads=1,
                                    sloppy=True, random_seed=0, harmonize=options)
        harmonize_wf = wf.get_node(workflow_name(records[0])).get_node("harmonize_wf")
        assert "away from the model's prediction for the source's site" in harmonize_wf.__desc__
        node = harmonize_wf.get_node("harmonize")
        assert node.inputs.level_slices is level
        assert node.inputs.match_intensities == "deciles"
        assert SamplerSettings(**node.inputs.sampler) == SamplerSettings(
            steps=3, source_guidance=0.5)


def test_images_at_the_target_site_are_kept_unless_asked(synthetic_bids, tmp_path):
    """The target site's own images are the reference: their harmonize node keeps the
    brain (keep_source) and says so in the methods text; --harmonize-target-site runs the
    model on them too.  Images from other sites always go through the model."""
    from harmonize_bids.workflows.base import HarmonizeOptions

    layout = bu.load_layout(synthetic_bids)
    records = bu.resolve_sites(layout, bu.collect_t1w(layout))
    assert {r.site for r in records} == {"siteA", "siteB", "siteC"}
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    for keep in (True, False):
        options = HarmonizeOptions(model_file=model, target_site="siteB", keep_target_site=keep)
        wf = init_harmonize_bids_wf(records=records, output_dir=tmp_path, omp_nthreads=1,
                                    sloppy=True, random_seed=0, harmonize=options)
        for record in records:
            sub_wf = wf.get_node(workflow_name(record)).get_node("harmonize_wf")
            at_target = record.site == "siteB"
            assert sub_wf.get_node("harmonize").inputs.keep_source is (keep and at_target)
            assert ("kept unchanged" in sub_wf.__desc__) is (keep and at_target)
            harmonize = sub_wf.get_node("harmonize").inputs
            assert harmonize.source_site == record.site
            assert not isdefined(harmonize.site_landmarks)
