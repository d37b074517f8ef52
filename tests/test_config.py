"""params.yaml validation: bad values fail before any work, naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medimg.config.base import ParamsError, apply_overrides, read_yaml
from medimg.config.params import load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid_in_every_profile(raw: dict) -> None:
    for profile in ["sample", *raw["profiles"]]:
        params = parse_params({**raw, "profile": profile})
        assert params.profile == profile
        assert set(params.runs) == set(raw["runs"])


def test_full_profile_overrides_sources_and_sizes(raw: dict) -> None:
    sample = parse_params(raw)
    full = parse_params({**raw, "profile": "full-local"})
    assert sample.datasets["chest_xray"].fetch.source == "data/sample/chest_xray"
    assert full.datasets["chest_xray"].fetch.source.endswith("chest_xray_224.zip")
    # full-local's archive holds 224 px images; the full-resolution release is prepared at 600
    assert full.datasets["chest_xray"].prepare.image_size == 224
    assert parse_params({**raw, "profile": "full"}).datasets["chest_xray"].prepare.image_size == 600
    assert full.runs["xray_cnn"].repeats == 5
    # keys the profile does not name keep their base value
    assert full.datasets["brain_tumor_mri"].split == sample.datasets["brain_tumor_mri"].split
    assert full.datasets["chest_xray"].split.seed == sample.datasets["chest_xray"].split.seed


@pytest.mark.parametrize(
    ("dotted", "value", "expected_in_message"),
    [
        ("runs.xray_cnn.model", "resnet9000", "runs.xray_cnn.model = 'resnet9000'"),
        ("runs.xray_cnn.epochs", -1, "runs.xray_cnn.epochs = -1"),
        ("runs.xray_cnn.batch_size", 0, "runs.xray_cnn.batch_size = 0"),
        ("runs.xray_cnn.dataset", "retina", "runs.xray_cnn.dataset = 'retina'"),
        ("datasets.chest_xray.channels", 2, "datasets.chest_xray.channels = 2"),
        ("datasets.chest_xray.split.protocols", ["random"], "datasets.chest_xray.split.protocols"),
        ("datasets.chest_xray.prepare.offline_augment.zoom_range", [1.2, 1.0], "zoom_range"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(
    raw: dict, dotted: str, value: object, expected_in_message: str
) -> None:
    bad = apply_overrides(raw, {dotted: value}, "test", ("runs",))
    with pytest.raises(ParamsError) as err:
        parse_params(bad)
    assert expected_in_message in str(err.value)


def test_unknown_model_lists_the_allowed_models(raw: dict) -> None:
    bad = apply_overrides(raw, {"runs.mri_cnn.model": "vgg"}, "test")
    with pytest.raises(
        ParamsError, match=r"allowed: \['alexnet', 'efficientnet_b0', 'mri_cnn', 'xray_cnn'\]"
    ):
        parse_params(bad)


def test_unknown_key_is_an_error_not_ignored(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    bad["runs"]["xray_cnn"]["epocs"] = 3
    with pytest.raises(ParamsError, match=r"runs\.xray_cnn\.epocs"):
        parse_params(bad)


def test_missing_dataset_section(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    del bad["datasets"]
    with pytest.raises(ParamsError, match="datasets"):
        parse_params(bad)


def test_unknown_profile_and_bad_override_key(raw: dict) -> None:
    with pytest.raises(ParamsError, match="profile = 'huge' is not defined"):
        parse_params({**raw, "profile": "huge"})
    bad = copy.deepcopy(raw)
    bad["profiles"]["full"]["datasets.chest_xray.prepare.image_sise"] = 3
    with pytest.raises(ParamsError, match=r"'datasets\.chest_xray\.prepare\.image_sise' does not"):
        parse_params({**bad, "profile": "full"})
    # a run takes keys it does not state from run_defaults: a profile may set them, and
    # the run's schema catches a typo
    bad = copy.deepcopy(raw)
    bad["profiles"]["full"]["runs.xray_cnn.epoch"] = 3
    with pytest.raises(ParamsError, match=r"runs\.xray_cnn\.epoch = 3: unknown key"):
        parse_params({**bad, "profile": "full"})


def test_seeds_of_repeats(raw: dict) -> None:
    raw["runs"]["xray_cnn"]["seed"] = 10
    run = parse_params(raw).runs["xray_cnn"]
    assert run.seeds() == [10 + k for k in range(run.repeats)]


def test_load_params_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("profile: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def test_unknown_model_option_fails_naming_run_option_and_allowed(raw: dict) -> None:
    raw["runs"]["mri_cnn"]["model_options"] = {"dropuot": 0.3}
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "runs.mri_cnn.model_options.dropuot" in message and "unknown option" in message
    assert "dropout" in message and "filters" in message  # what is allowed


def test_ill_typed_model_option_fails_naming_the_value(raw: dict) -> None:
    raw["runs"]["xray_cnn"]["model_options"] = {"feature_maps": "many"}
    with pytest.raises(ParamsError, match=r"runs\.xray_cnn\.model_options\.feature_maps = 'many'"):
        parse_params(raw)


def test_fine_tuning_needs_an_epoch_after_the_frozen_ones(raw: dict) -> None:
    run = raw["runs"]["xray_cnn"]
    run["fine_tuning"] = {
        "frozen_epochs": raw["run_defaults"]["by_dataset"]["chest_xray"]["epochs"],
        "unfreeze_top_blocks": 1,
        "learning_rate": 1e-4,
    }
    with pytest.raises(ParamsError, match=r"runs\.xray_cnn\.fine_tuning\.frozen_epochs"):
        parse_params(raw)


def test_a_profile_starts_from_another_with_a_yaml_merge_key() -> None:
    """cpu-check is full-local's overrides (merged in by YAML) plus its own, which win."""
    text = (REPO / "params.yaml").read_text()
    raw = yaml.safe_load(text)
    assert "<<: *full-local" in text
    cpu_check, full_local = raw["profiles"]["cpu-check"], raw["profiles"]["full-local"]
    assert set(full_local) <= set(cpu_check)
    params = parse_params({**raw, "profile": "cpu-check"})
    assert params.datasets["chest_xray"].prepare.image_size == 128  # its own value
    source = full_local["datasets.chest_xray.fetch.source"]
    assert params.datasets["chest_xray"].fetch.source == source  # full-local's


def test_overlapping_override_keys_are_refused(raw: dict) -> None:
    raw["profiles"]["odd"] = {
        "runs.xray_cnn.augmentation": {"noise_std": 5},
        "runs.xray_cnn.augmentation.noise_std": 10,
    }
    with pytest.raises(ParamsError, match=r"profiles\.odd: override keys .*augmentation.* overlap"):
        parse_params({**raw, "profile": "odd"})


# ------------------------------------------------------------------ a run checked whole


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        # a boolean is not a number (YAML's `true` would otherwise train 1 epoch)
        ("runs.xray_cnn.epochs", True, r"runs\.xray_cnn\.epochs = True: Input should be a valid"),
        ("runs.xray_cnn.learning_rate", "fast", r"learning_rate = 'fast'"),
        ("runs.xray_cnn.run_eagerly", 1, r"run_eagerly = 1: Input should be a valid boolean"),
        ("datasets.chest_xray.channels", True, r"channels = True"),
        # the model can only shrink the prepared images
        ("runs.xray_cnn.image_size", 100000, r"image_size = 100000: Input should be less"),
        ("runs.xray_cnn.image_size", 96, r"image_size = 96 is above the prepared size 64"),
        # clean batch-norm statistics need batch normalisation (AlexNet's default has none)
        ("runs.alexnet.batch_norm_statistics", "clean", r"runs\.alexnet\.batch_norm_statistics"),
        # fine-tuning counts the model's declared blocks (the X-ray CNN has 5)
        (
            "runs.xray_cnn.fine_tuning",
            {"frozen_epochs": 1, "unfreeze_top_blocks": 6, "learning_rate": 1e-4},
            r"unfreeze_top_blocks = 6, but model 'xray_cnn' has 5 blocks",
        ),
    ],
)
def test_a_run_is_checked_whole_before_any_work(raw, dotted, value, message) -> None:
    bad = apply_overrides(raw, {dotted: value}, "test", ("runs",))
    with pytest.raises(ParamsError, match=message):
        parse_params(bad)


def test_a_value_from_run_defaults_is_named_where_it_comes_from(raw) -> None:
    raw["run_defaults"]["by_dataset"]["chest_xray"]["batch_size"] = 0
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert (
        "runs.xray_cnn.batch_size = 0 (from run_defaults.by_dataset.chest_xray.batch_size)"
        in str(caught.value)
    )


def test_a_run_states_what_dvc_reads_itself(raw) -> None:
    del raw["runs"]["xray_cnn"]["model"]
    raw["run_defaults"]["all"]["model"] = "xray_cnn"
    with pytest.raises(ParamsError, match=r"runs\.xray_cnn must state \['model'\] itself"):
        parse_params(raw)


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    text = (REPO / "params.yaml").read_text()
    lines = text.splitlines()
    at = lines.index("profile: sample")
    lines.insert(at + 1, "profile: full")
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError) as caught:
        load_params(tmp_path / "params.yaml")
    message = str(caught.value)
    assert f"key 'profile' appears twice in one mapping, at line {at + 1} and line {at + 2}" in (
        message
    )


def test_a_merge_key_may_be_overridden_and_floats_read_as_yaml_1_2(tmp_path: Path) -> None:
    """`<<: *x` then the same key is what a merge key is for; `1e-4` is a number, as DVC
    (YAML 1.2) reads it, not the string PyYAML's YAML 1.1 makes of it."""
    (tmp_path / "p.yaml").write_text(
        "base: &base {a: 1, b: 2}\nderived:\n  <<: *base\n  b: 3\nrate: 1e-4\n"
    )
    loaded = read_yaml(tmp_path / "p.yaml")
    assert loaded["derived"] == {"a": 1, "b": 3}
    assert loaded["rate"] == pytest.approx(1e-4)
