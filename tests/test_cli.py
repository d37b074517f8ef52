"""The `medimg` command: a subcommand per stage, clear errors without tracebacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medimg.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = tuple(build_parser()._subparsers._group_actions[0].choices)
STAGES = tuple(path.stem for path in sorted((REPO / "stages").glob("*.py")))


def test_the_stages_and_commands_users_read_about_exist() -> None:
    assert {"fetch", "split", "augment", "train", "evaluate", "report", "tune"} <= set(STAGES)
    assert set(STAGES) <= set(SUBCOMMANDS)
    assert {"predict", "params", "gpu-bundle", "import-results"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: medimg {command}" in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    code = main(["--params", str(REPO / "params.yaml"), "fetch", "--dataset", "retina"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown dataset 'retina'" in err and "chest_xray" in err


def test_invalid_params_file_fails_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text().replace("batch_size: 8", "batch_size: 0", 1)
    bad.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "medimg.cli", "--params", str(bad), "train", "--run", "xray_cnn"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "runs.xray_cnn.batch_size = 0 (from run_defaults.by_dataset.chest_xray.batch_size)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_data_stage_reads_only_its_dataset(tmp_path: Path) -> None:
    """A bad run does not stop fetch, which reads datasets.<name> only (and DVC tracks
    only that); the train stage and `medimg params`, which read the run, refuse it."""
    shutil.copytree(REPO / "data" / "sample" / "chest_xray", tmp_path / "data/sample/chest_xray")
    text = (REPO / "params.yaml").read_text().replace("batch_size: 8", "batch_size: 0", 1)
    (tmp_path / "params.yaml").write_text(text)
    env = {**os.environ, "MEDIMG_ROOT": str(tmp_path)}

    def medimg(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "medimg.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)

    assert medimg("fetch", "--dataset", "chest_xray").returncode == 0
    assert (tmp_path / "data/raw/chest_xray/manifest.csv").is_file()
    for refused in (medimg("params"), medimg("train", "--run", "xray_cnn")):
        assert refused.returncode == 2
        assert "runs.xray_cnn.batch_size = 0" in refused.stderr


def test_stage_scripts_call_the_cli() -> None:
    for stage in STAGES:
        result = subprocess.run(
            [sys.executable, str(REPO / "stages" / f"{stage}.py"), "--help"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert f"usage: medimg {stage}" in result.stdout


@pytest.mark.slow
def test_train_without_prepared_arrays_names_the_stage_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "medimg.cli", "train", "--run", "xray_cnn"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MEDIMG_ROOT": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "dvc repro augment@chest_xray" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()
    assert not (tmp_path / "mlruns").exists()


RUN_STAGE_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from medimg.commands import fetch, params
from medimg.commands.base import run_stage

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit-ran").write_text("yes"))
# A non-daemon thread still working when main returns: joined first, as at a normal exit.
threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread-done").write_text("yes"))).start()
# An idle thread pool left open (its worker threads are not daemons): released, not waited on.
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)
pool.submit(lambda: None).result()
print("printed before the exit, left unflushed in a pipe", end="")
command = {"params": params, "fetch": fetch}[sys.argv[2]].COMMAND
run_stage(command, sys.argv[3:])
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["params"], 0),  # main returns 0
        (["fetch", "--dataset", "retina"], 2),  # a user error: main returns 2
    ],
)
def test_run_stage_exits_with_mains_status_after_threads_handlers_and_output(
    tmp_path: Path, argv: list[str], code: int
) -> None:
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-c", RUN_STAGE_SCRIPT, str(tmp_path), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,  # a hang (threads waited on forever) fails instead of blocking the suite
    )
    assert result.returncode == code, result.stderr
    assert result.stdout.startswith("printed before the exit")
    assert (tmp_path / "atexit-ran").read_text() == "yes"
    assert (tmp_path / "thread-done").read_text() == "yes"


def test_run_stage_leaves_an_exception_to_the_normal_exit(tmp_path: Path) -> None:
    """A bug keeps its traceback and the interpreter's own status (1)."""
    script = (
        "from medimg.commands.base import Command, run_stage\n"
        "run_stage(Command('bug', 'a bug', lambda parser: None, lambda args: 1 / 0), [])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ZeroDivisionError" in result.stderr and "Traceback" in result.stderr
