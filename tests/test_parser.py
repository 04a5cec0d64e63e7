"""The command line: options, defaults and BIDS-Apps exit codes."""
from __future__ import annotations

import json

import pytest

from harmonize_bids.cli.parser import _build_parser, parse_args
from harmonize_bids.cli.run import main
from harmonize_bids.exceptions import InputError, UsageError


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        _build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--participant-label", "--session-label", "--bids-filter-file",
                "--skip-bids-validation", "--work-dir", "--nprocs", "--omp-nthreads",
                "--mem-mb", "--random-seed", "--target-site", "--model", "--device",
                "--sloppy", "--verbose", "--version", "--steps", "--strength", "--stop-at",
                "--samples", "--source-guidance", "--model-info", "--harmonize-target-site",
                "(default:"):
        assert opt in text



def test_version_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert "harmonize_bids" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [],
    ["bids", "out"],
    ["bids", "out", "subject"],
    ["bids", "out", "participant", "--nprocs", "0"],
    ["bids", "out", "participant", "--device", "tpu"],
    ["bids", "out", "participant", "--no-such-option"],
    ["bids", "out", "participant", "--stop-at", "1"],
    ["bids", "out", "participant", "--samples", "0"],
    ["bids", "out", "participant", "--source-guidance", "-0.5"],
    ["bids", "out", "participant", "--source-guidance", "nan"],
    ["bids", "out", "participant", "--match-intensities", "yes"],
    ["bids", "out", "group", "--warmup-steps", "-1"],
    ["bids", "out", "group", "--shifted-copies", "0"],
])
def test_usage_errors_exit_64(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bids").mkdir()
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 64


@pytest.mark.parametrize("argv, message", [
    (["bids", "out", "participant", "--steps", "1001"], "sample_steps must be in"),
    # outputs inside the input, outside derivatives/, would be read back as input
    (["bids", "bids/myout", "participant"], "not under its derivatives/ folder"),
])
def test_cross_option_usage_errors(argv, message, tmp_path, monkeypatch):
    from harmonize_bids.exceptions import UsageError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bids").mkdir()
    with pytest.raises(UsageError, match=message):
        parse_args(argv)
    parse_args(["bids", "bids/derivatives/harmonize_bids", "participant"])  # the usual place


def test_labels_and_aliases(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    s = parse_args([str(bids), str(tmp_path / "out"), "participant",
                    "--participant_label", "sub-01", "02", "--session-id", "ses-pre",
                    "-w", str(tmp_path / "w"), "--nprocs", "4", "--random-seed", "3", "-vv"])
    assert s.participant_label == ("01", "02")
    assert s.session_label == ("pre",)
    assert s.omp_nthreads == 4 and s.nprocs == 4
    assert s.random_seed == 3 and s.verbose == 2
    assert s.work_dir == (tmp_path / "w").absolute()


def test_settings_roundtrip_toml(tmp_path):
    from harmonize_bids.config import Settings

    bids = tmp_path / "bids"
    bids.mkdir()
    s = parse_args([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "01",
                    "-w", str(tmp_path / "w"), "--random-seed", "42"])
    path = s.to_filename(tmp_path / "w" / "config.toml")
    assert "random_seed = 42" in path.read_text()
    assert Settings.from_filename(path) == s
    s = parse_args([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                    "--steps", "6", "--stop-at", "0.3", "--samples", "2",
                    "--source-guidance", "0.5"])
    assert s.sampler().timesteps(1000) == [999, 859, 719, 580, 440, 300]
    assert s.sampler().samples == 2 and s.sampler().source_guidance == 0.5
    assert Settings.from_filename(s.to_filename(tmp_path / "w" / "c2.toml")) == s
    # --help's own filter example: null ("entity absent") cannot be written as TOML
    filters = tmp_path / "filters.json"
    filters.write_text('{"t1w": {"acquisition": "mprage", "run": null}}')
    s = parse_args([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                    "--bids-filter-file", str(filters)])
    assert s.bids_filters == {"t1w": {"acquisition": "mprage", "run": None}}
    assert Settings.from_filename(s.to_filename(tmp_path / "w" / "c3.toml")) == s


@pytest.mark.parametrize("label", ["../../etc", "sub-01/..", "a b", "01;rm"])
def test_unsafe_labels_are_refused(label, tmp_path):
    (tmp_path / "bids").mkdir()
    with pytest.raises(UsageError):
        parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                    "--participant-label", label])


def test_output_equal_to_input_is_refused(tmp_path):
    (tmp_path / "bids").mkdir()
    with pytest.raises(UsageError):
        parse_args([str(tmp_path / "bids"), str(tmp_path / "bids"), "participant"])
    assert main([str(tmp_path / "bids"), str(tmp_path / "bids"), "participant"]) == 64


def test_stop_at_must_be_below_strength(tmp_path):
    (tmp_path / "bids").mkdir()
    argv = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
            "--stop-at", "0.5", "--strength", "0.4"]
    with pytest.raises(UsageError, match="--stop-at"):
        parse_args(argv)
    assert main(argv) == 64


def test_from_scratch_and_a_starting_model_exclude_each_other(tmp_path):
    (tmp_path / "bids").mkdir()
    base = [str(tmp_path / "bids"), str(tmp_path / "out"), "group"]
    assert parse_args(base + ["--from-scratch"]).from_scratch is True
    assert parse_args(base).from_scratch is False  # the default: fine-tune --model
    argv = base + ["--from-scratch", "--model", str(tmp_path / "m.safetensors")]
    with pytest.raises(UsageError, match="--from-scratch"):
        parse_args(argv)
    assert main(argv) == 64


def test_work_dir_inside_input_is_refused(tmp_path):
    (tmp_path / "bids").mkdir()
    with pytest.raises(UsageError):
        parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                    "-w", str(tmp_path / "bids" / "work")])


def test_missing_inputs_exit_66(tmp_path):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66
    (tmp_path / "bids").mkdir()
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "--model", str(tmp_path / "missing.safetensors")]) == 66
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "--bids-filter-file", str(tmp_path / "missing.json")]) == 66
    # a directory that is not a BIDS dataset
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "--skip-bids-validation", "-w", str(tmp_path / "w")]) == 66


def test_bad_filter_file_is_a_usage_error(tmp_path):
    (tmp_path / "bids").mkdir()
    bad = tmp_path / "f.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError):
        parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                    "--bids-filter-file", str(bad)])
    bad.write_text(json.dumps({"bold": {"task": "rest"}}))
    with pytest.raises(UsageError):
        parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                    "--bids-filter-file", str(bad)])


def test_use_plugin_file_is_read_and_checked(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    good = tmp_path / "slurm.yml"
    good.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: --time=60\n")
    s = parse_args([str(bids), str(tmp_path / "out"), "participant", "--use-plugin", str(good)])
    assert s.plugin == "SLURMGraph" and s.plugin_args == {"sbatch_args": "--time=60"}
    assert parse_args([str(bids), str(tmp_path / "o"), "participant"]).plugin == "MultiProc"
    for text in ("plugin: Torque\n", "plugin_args: {}\n", "plugin: [unclosed\n",
                 "plugin: Linear\nplugin_args: 3\n", "plugin: Linear\nextra: 1\n"):
        bad = tmp_path / "bad.yml"
        bad.write_text(text)
        with pytest.raises(UsageError):
            parse_args([str(bids), str(tmp_path / "out"), "participant", "--use-plugin", str(bad)])
    with pytest.raises(UsageError):
        parse_args([str(bids), str(tmp_path / "out"), "participant",
                    "--use-plugin", str(tmp_path / "missing.yml")])


def test_version_names_the_container_build_on_one_line(monkeypatch, capsys):
    build = "cpu image, commit abc1234, built 2026-11-25T03:24:35Z " + "x" * 60
    monkeypatch.setenv("HARMONIZE_BIDS_BUILD", build)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        f"harmonize_bids {__import__('harmonize_bids').__version__} ({build})"]


@pytest.mark.parametrize("extra, scheme", [([], "auto"), (["--match-intensities"], "medians"),
                                           (["--match-intensities", "quartiles"], "quartiles"),
                                           (["--match-intensities", "deciles"], "deciles"),
                                           (["--match-intensities", "vigintiles"],
                                            "vigintiles"),
                                           (["--match-intensities", "none"], "none")])
def test_match_intensities_schemes(extra, scheme, tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    s = parse_args([str(bids), str(tmp_path / "out"), "participant", *extra])
    assert s.match_intensities == scheme


@pytest.mark.parametrize("flag, setting", [("--no-level-slices", "level_slices"),
                                           ("--harmonize-target-site", "keep_target_site")])
def test_switches_are_on_unless_switched_off(flag, setting, tmp_path):
    """Slice levelling and keeping the target site's images unchanged are defaults."""
    bids = tmp_path / "bids"
    bids.mkdir()
    args = [str(bids), str(tmp_path / "out"), "participant"]
    assert getattr(parse_args(args), setting) is True
    assert getattr(parse_args(args + [flag]), setting) is False


def test_keep_subject_intensities_reads_the_dataset_site_landmarks_when_they_exist(tmp_path):
    """By default the participant level reads OUTPUT_DIR/site_landmarks.json (or
    --site-landmarks) when it exists and goes on without it; --keep-subject-intensities
    refuses to start without it (and says how to make it); --no-keep-subject-intensities
    never reads it; contradictions are refused."""
    bids = tmp_path / "bids"
    bids.mkdir()
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant"]
    target = args + ["--target-site", "b"]
    assert parse_args(args).site_landmarks is None
    assert parse_args(target).site_landmarks is None  # no file yet: the plain match
    keep = target + ["--keep-subject-intensities"]
    with pytest.raises(InputError, match="group --landmarks-only"):
        parse_args(keep)
    # preprocessing only (no --target-site): nothing to match, nothing needed
    assert parse_args(args + ["--keep-subject-intensities"]).site_landmarks is None
    out.mkdir()
    (out / "site_landmarks.json").write_text("{}")
    for asked in (target, keep):
        assert parse_args(asked).site_landmarks == out / "site_landmarks.json"
    assert parse_args(target + ["--no-keep-subject-intensities"]).site_landmarks is None
    assert parse_args(target + ["--match-intensities", "none"]).site_landmarks is None
    assert parse_args(args).site_landmarks is None  # preprocessing does not read it
    other = tmp_path / "other.json"
    other.write_text("{}")
    for asked in (target, keep):
        assert parse_args(asked + ["--site-landmarks", str(other)]).site_landmarks == other
    with pytest.raises(InputError, match="group --landmarks-only"):
        parse_args(target + ["--site-landmarks", str(tmp_path / "missing.json")])
    with pytest.raises(UsageError, match="turns off"):
        parse_args(target + ["--no-keep-subject-intensities", "--site-landmarks", str(other)])
    with pytest.raises(UsageError, match="need --match-intensities"):
        parse_args(keep + ["--match-intensities", "none"])
    # the group level measures the file; it does not need one
    group = parse_args([str(bids), str(out), "group", "--landmarks-only"])
    assert group.landmarks_only is True and group.site_landmarks is None


def test_omp_nthreads_drives_the_workers_thread_environment(monkeypatch, tmp_path):
    """--omp-nthreads reaches OMP_NUM_THREADS and ITK's thread count in the environment
    nipype's workers inherit, and the caller's environment comes back afterwards."""
    import os

    from harmonize_bids.cli.run import thread_environment

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", raising=False)
    with thread_environment(3, tmp_path):
        assert os.environ["OMP_NUM_THREADS"] == "3"
        assert os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "3"
        assert os.environ["NIPYPE_CONFIG_DIR"] == str(tmp_path)
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in os.environ
