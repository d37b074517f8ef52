"""`medimg predict` as a tool: files, folders, patterns, bad files, formats, Grad-CAM.

Through `medimg.cli.main` with a real model folder (a tiny Keras model saved as the
train stage saves it) and real image files of every supported kind.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from inference_support import (
    BAD_MODEL_FILES,
    BINARY,
    bad_model_file,
    build_model,
    gradient_image,
    save_model_folder,
    write_dicom,
)
from medimg.cli import main
from medimg.commands.predict import PREDICT_PARTLY_FAILED
from medimg.data.preprocess import load_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "seed-0"
    return save_model_folder(folder, build_model(), BINARY)


def predict(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """Run `medimg predict ARGV`; (exit status, stdout, stderr)."""
    try:
        code = main(["--params", str(REPO / "params.yaml"), "predict", *map(str, argv)])
    except SystemExit as exited:  # argparse, and the partial-failure status
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


def expected_probability(model_dir: Path, image: Path) -> float:
    """P(PNEUMONIA) straight from Keras on load_image's pixels: what predict must report."""
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    pixels = load_image(image, channels=1, image_size=32, aspect="stretch")
    return float(model.predict(pixels[None], verbose=0)[0, 0])


def save_grey(path: Path, width: int = 48, height: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gradient_image(width, height)).save(path)
    return path


def test_a_folder_with_bad_files_classifies_the_others(model_dir, tmp_path, capsys):
    folder = tmp_path / "scans"
    good = [save_grey(folder / "a.png"), save_grey(folder / "nested" / "b.jpeg")]
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    save_grey(folder / "tiny.png", 1, 1)

    code, out, err = predict(capsys, "--model", model_dir, "--format", "json", folder)

    assert code == PREDICT_PARTLY_FAILED
    document = json.loads(out)
    by_name = {Path(r["path"]).name: r for r in document["results"]}
    assert document["counts"] == {"ok": 2, "error": 2, "skipped": 1}
    for image in good:
        result = by_name[image.name]
        assert result["status"] == "ok"
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        expected = expected_probability(model_dir, image)
        assert result["probabilities"]["PNEUMONIA"] == pytest.approx(expected, abs=1e-6)
    assert "cannot read the image" in by_name["broken.jpeg"]["message"]
    assert by_name["tiny.png"]["message"] == (
        "image is 1 x 1 px; the shorter side must be at least 32 px"
    )
    assert by_name["notes.txt"]["status"] == "skipped"
    assert "2 classified, 2 could not be classified, 1 skipped" in err


def test_all_good_exits_0_with_the_thesis_caption(model_dir, tmp_path, capsys):
    images = [save_grey(tmp_path / "one.png"), save_grey(tmp_path / "two.png")]
    code, out, _ = predict(capsys, "--model", model_dir / "model.keras", *images)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["image", "result"]
    for line, image in zip(lines[1:], images, strict=True):
        p = expected_probability(model_dir, image)
        top, label = (p, "pneumonia") if p >= 0.5 else (1 - p, "normal")
        assert line.startswith(str(image))
        assert line.endswith(f"{top * 100:.2f} % probability: {label}")


def test_every_pixel_format_is_classified(model_dir, tmp_path, capsys):
    folder = tmp_path / "formats"
    folder.mkdir()
    grey = gradient_image()
    Image.fromarray(grey.astype(np.uint16) * 16).save(folder / "sixteen_bit.png")
    Image.fromarray(np.stack([grey, grey, grey, grey], -1), "RGBA").save(folder / "rgba.png")
    Image.fromarray(grey).convert("P").save(folder / "palette.png")
    Image.fromarray(grey).convert("CMYK").save(folder / "cmyk.jpeg")
    Image.fromarray(grey).convert("LA").save(folder / "la.png")
    write_dicom(
        folder / "xray.dcm", grey.astype(np.uint16) * 16, WindowCenter=2048, WindowWidth=4096
    )
    write_dicom(folder / "IM000001", grey.astype(np.uint16))  # no suffix: found by its header

    code, out, _ = predict(capsys, "--model", model_dir, "--format", "csv", folder)

    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert sorted(Path(p).name for p in table["path"]) == sorted(
        [
            "sixteen_bit.png",
            "rgba.png",
            "palette.png",
            "cmyk.jpeg",
            "la.png",
            "xray.dcm",
            "IM000001",
        ]
    )
    assert (table["status"] == "ok").all()
    sums = table["probability_NORMAL"] + table["probability_PNEUMONIA"]
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)


def test_csv_to_a_file_and_glob_patterns(model_dir, tmp_path, capsys):
    for name in ("x1.png", "x2.png", "other.jpeg"):
        save_grey(tmp_path / "in" / name)
    output = tmp_path / "out" / "results.csv"
    output.parent.mkdir()

    code, out, err = predict(
        capsys,
        "--model",
        model_dir,
        "--format",
        "csv",
        "--output",
        output,
        tmp_path / "in" / "x*.png",
        tmp_path / "in" / "*.gif",
    )

    assert code == PREDICT_PARTLY_FAILED  # the pattern that matches nothing
    assert out == "" and f"results in {output}" in err
    assert [p.name for p in output.parent.iterdir()] == ["results.csv"]  # no temporary left
    table = pd.read_csv(output)
    assert list(table.columns) == [
        "path",
        "status",
        "predicted_class",
        "probability",
        "probability_NORMAL",
        "probability_PNEUMONIA",
        "message",
        "explanation",
    ]
    assert [Path(p).name for p in table["path"]] == ["x1.png", "x2.png", "*.gif"]
    assert list(table["status"]) == ["ok", "ok", "error"]
    assert table["message"].iloc[2] == "no file matches this pattern"
    np.testing.assert_allclose(
        table["probability"].iloc[:2],
        table[["probability_NORMAL", "probability_PNEUMONIA"]].iloc[:2].max(axis=1),
    )


def test_min_size_and_batching(model_dir, tmp_path, capsys):
    images = [save_grey(tmp_path / f"small{i}.png", 20 + i, 16) for i in range(5)]
    code, _, _ = predict(capsys, "--model", model_dir, *images)
    assert code == PREDICT_PARTLY_FAILED  # 16 px < 32 px
    code, one_by_one, _ = predict(
        capsys,
        "--model",
        model_dir,
        "--min-size",
        16,
        "--batch-size",
        1,
        "--format",
        "json",
        *images,
    )
    assert code == 0
    code, batched, _ = predict(
        capsys,
        "--model",
        model_dir,
        "--min-size",
        16,
        "--batch-size",
        3,
        "--format",
        "json",
        *images,
    )
    first, second = json.loads(one_by_one)["results"], json.loads(batched)["results"]
    for a, b in zip(first, second, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_a_missing_model_is_called_missing(tmp_path, capsys):
    image = save_grey(tmp_path / "a.png")
    output = tmp_path / "results.json"
    code, out, err = predict(
        capsys, "--model", tmp_path / "models" / "nope", "--output", output, image
    )
    assert code == 2
    assert "model " in err and "nope: missing (no such file or folder)" in err
    assert "Traceback" not in err and out == ""
    assert not output.exists()


def test_a_model_folder_without_its_preprocessing_is_named(model_dir, tmp_path, capsys):
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.keras").write_bytes((model_dir / "model.keras").read_bytes())
    code, _, err = predict(capsys, "--model", alone, save_grey(tmp_path / "a.png"))
    assert code == 2 and "preprocessing.json: not found" in err


@pytest.mark.parametrize("kind", BAD_MODEL_FILES)
def test_a_hostile_or_corrupt_model_file_ends_in_one_line(model_dir, tmp_path, capsys, kind):
    folder = tmp_path / "given"
    marker = tmp_path / "the-config-ran"
    model_file = bad_model_file(model_dir / "model.keras", kind, folder / "model.keras", marker)
    (folder / "preprocessing.json").write_bytes((model_dir / "preprocessing.json").read_bytes())

    code, out, err = predict(capsys, "--model", model_file, save_grey(tmp_path / "a.png"))

    assert code == 2 and out == ""
    assert err.startswith(f"medimg predict: error: {model_file}: not a ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


def test_explain_writes_a_gradcam_overlay_per_image(model_dir, tmp_path, capsys):
    images = [save_grey(tmp_path / "a" / "scan.png"), save_grey(tmp_path / "b" / "scan.png")]
    (tmp_path / "a" / "bad.png").write_bytes(b"nope")
    explain = tmp_path / "explained"

    code, out, _ = predict(
        capsys,
        "--model",
        model_dir,
        "--explain",
        explain,
        "--format",
        "json",
        *images,
        tmp_path / "a" / "bad.png",
    )

    assert code == PREDICT_PARTLY_FAILED
    results = json.loads(out)["results"]
    written = [Path(r["explanation"]) for r in results if r["status"] == "ok"]
    assert [p.name for p in written] == ["scan.png", "scan-2.png"]  # same names, two folders
    assert sorted(explain.iterdir()) == sorted(written)
    for path in written:
        with Image.open(path) as overlay:
            assert overlay.format == "PNG" and overlay.size == (400, 450)
            colours = np.asarray(overlay.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(colours, axis=0)) > 50  # an image under a heat map, not blank


def test_an_unknown_gradcam_layer_fails_before_any_image(model_dir, tmp_path, capsys):
    code, _, err = predict(
        capsys,
        "--model",
        model_dir,
        "--explain",
        tmp_path / "e",
        "--explain-layer",
        "nope",
        save_grey(tmp_path / "a.png"),
    )
    assert code == 2 and "Grad-CAM layer 'nope' is not in model" in err
