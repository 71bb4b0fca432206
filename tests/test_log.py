"""Tagged stderr logging: the ``[tag] ...`` line shape the stages print, and the CLI's ``-q`` / ``-v``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.log import get_logger, set_verbosity


@pytest.fixture(autouse=True)
def _default_verbosity() -> Iterator[None]:
    """The level lives on the package's root logger: put it back so other tests see progress lines."""
    set_verbosity(0)
    yield
    set_verbosity(0)


def _say_all(tag: str = "build") -> None:
    log = get_logger(tag)
    log.debug("detail")
    log.info("measured 3 candidates")
    log.warning("cache entry unreadable")


def test_tag_format_on_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    _say_all()
    get_logger("early-exit").warning("warning: already says so")  # the prefix is not doubled
    get_logger("train").error("bf16 emulated")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["[build] measured 3 candidates", "[build] warning: cache entry unreadable",
                                "[early-exit] warning: already says so", "[train] error: bf16 emulated"]


@pytest.mark.parametrize(("verbosity", "want"), [
    (-1, ["[build] warning: cache entry unreadable"]),
    (0, ["[build] measured 3 candidates", "[build] warning: cache entry unreadable"]),
    (1, ["[build] detail", "[build] measured 3 candidates", "[build] warning: cache entry unreadable"]),
])
def test_set_verbosity(verbosity: int, want: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    set_verbosity(verbosity)
    _say_all()
    assert capsys.readouterr().err.splitlines() == want


def _artifact(tmp_path: Path) -> Path:
    model = tmp_path / "fp32.onnx"
    model.write_bytes(b"onnx")
    (tmp_path / "fp32.onnx.json").write_text(json.dumps({"format": "onnx", "precision": "fp32"}))
    return model


@pytest.mark.parametrize(("flags", "want"), [
    (["-q"], ["[build] warning: cache entry unreadable"]),
    (["--quiet"], ["[build] warning: cache entry unreadable"]),
    ([], ["[build] measured 3 candidates", "[build] warning: cache entry unreadable"]),
    (["-v"], ["[build] detail", "[build] measured 3 candidates", "[build] warning: cache entry unreadable"]),
    (["--verbose"], ["[build] detail", "[build] measured 3 candidates", "[build] warning: cache entry unreadable"]),
])
def test_cli_quiet_and_verbose(flags: list[str], want: list[str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """-q hides progress lines but never warnings nor the command's own result on stdout; -v adds debug."""
    from edgecompress.cli import main

    main([*flags, "inspect", str(_artifact(tmp_path))])
    out, err = capsys.readouterr()
    assert json.loads(out) == {"format": "onnx", "precision": "fp32"} and err == ""
    _say_all()
    assert capsys.readouterr().err.splitlines() == want


def test_cli_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    from edgecompress.cli import main

    with pytest.raises(SystemExit):
        main(["-q", "-v", "targets"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_error_line_is_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgecompress.cli import main

    with pytest.raises(SystemExit) as e:
        main(["-q", "inspect", str(tmp_path / "missing.onnx")])
    assert e.value.code == 1
    assert capsys.readouterr().err == (f"edgecompress: error: {tmp_path / 'missing.onnx'} not found; give a checkpoint "
                                       f"(models/*.pt) or an exported artifact (models/export/*.onnx, *.tflite)\n")


def test_stage_closing_line_goes_through_the_stages_logger(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["stages/distill.py"])
    assert friendly_main(lambda: "test accuracy 0.9243")() == "test accuracy 0.9243"
    assert capsys.readouterr().err == "[distill] done in 0 s: test accuracy 0.9243\n"
    set_verbosity(-1)  # -q: the closing line is progress, not a warning
    friendly_main(lambda: "test accuracy 0.9243")()
    assert capsys.readouterr().err == ""


def test_stage_error_line_is_one_plain_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["stages/distill.py"])

    def fail() -> str:
        raise EdgeCompressError("params.yaml:distill.alpha=2: must be in [0, 1]")

    set_verbosity(-1)  # errors show even under -q
    with pytest.raises(SystemExit) as e:
        friendly_main(fail)()
    assert e.value.code == 1
    assert capsys.readouterr().err == "edgecompress: error: params.yaml:distill.alpha=2: must be in [0, 1]\n"
