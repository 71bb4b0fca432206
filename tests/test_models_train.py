"""Models, losses, metrics and checkpoints on tiny tensors."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
import re

import numpy as np
import pytest
import torch

from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import classification_metrics, expected_calibration_error
from edgecompress.models import MobileNetStudent, arch_of, build_model, count_macs, count_params
from edgecompress.training.loop import TrainConfig, augment, evaluate, fit
from edgecompress.training.losses import kd_loss
from edgecompress.config import from_dict

from conftest import trained_student


def test_macs_of_a_single_conv_match_hand_count() -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False))
    assert count_macs(m, (1, 8, 8)) == 8 * 8 * 4 * 9


def test_depthwise_macs_divide_by_groups(tiny_student: MobileNetStudent) -> None:
    # stem 1->8 @12x12 (3x3), dw 8 @6x6, pw 8->16 @6x6, dw 16 @6x6, pw 16->16, dw 16 @3x3, pw 16->32, fc 32->4
    expected = (144 * 8 * 9 + 36 * 8 * 9 + 36 * 16 * 8 + 36 * 16 * 9 + 36 * 16 * 16
                + 9 * 16 * 9 + 9 * 32 * 16 + 4 * 32)
    assert count_macs(tiny_student, (1, 12, 12)) == expected


def test_arch_roundtrip(tiny_student: MobileNetStudent) -> None:
    rebuilt = build_model(arch_of(tiny_student))
    rebuilt.load_state_dict(tiny_student.state_dict())
    x = torch.randn(2, 1, 12, 12)
    assert torch.allclose(rebuilt.eval()(x), tiny_student(x))


def test_kd_loss_matches_hand_computation() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0, 0.0]])
    lab = torch.tensor([1])
    T, a = 2.0, 0.7
    p_t = torch.softmax(t / T, 1)
    q_s = torch.softmax(s / T, 1)
    kl = float((p_t * (p_t.log() - q_s.log())).sum())
    ce = -math.log(float(torch.softmax(s, 1)[0, 1]))
    expected = a * kl * T * T + (1 - a) * ce
    assert float(kd_loss(T, a)(s, t, lab)) == pytest.approx(expected, rel=1e-5)
    assert float(kd_loss(T, a)(s, None, lab)) == pytest.approx(ce, rel=1e-5)


def test_ece_zero_for_a_perfectly_calibrated_predictor() -> None:
    # Confidence 0.75 and exactly 3 of 4 right in that bin -> ECE 0.
    probs = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_overconfident_predictor() -> None:
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == 0.5
    assert m["nll"] == pytest.approx(-(5 * math.log(0.9) + 5 * math.log(0.1)) / 10)
    assert m["brier"] == pytest.approx(0.5 * (0.01 * 2) + 0.5 * (0.81 * 2))


def test_augment_shapes_and_flip_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = augment(x, pad=0, flip=True, fill=torch.zeros(1), gen=g)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = augment(x, pad=2, flip=False, fill=torch.full((1,), -1.0), gen=g)
    assert out.shape == x.shape
    # Every crop is a shifted window: its values are original pixels or the fill value.
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {-1.0}


def test_fit_learns_a_separable_problem(blobs) -> None:
    m = trained_student(blobs)
    assert evaluate(m, *blobs)["accuracy"] > 0.9


@pytest.mark.parametrize("bad, match", [
    ({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"), ({"momentum": 1.0}, "momentum"),
    ({"label_smoothing": 1.5}, "label_smoothing"), ({"bogus": 1}, "unknown key"),
])
def test_train_config_errors(bad: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        from_dict(TrainConfig, bad, "params.yaml:x.train")


def test_checkpoint_roundtrip_and_corrupt_file(tmp_path, tiny_student) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_student, arch_of(tiny_student), {"parent": None, "metrics": {"a": 1}})
    model, meta = load_checkpoint(path)
    assert meta["metrics"] == {"a": 1} and meta["arch"]["kind"] == "mobilenet"
    assert (tmp_path / "m.pt.json").exists()
    assert count_params(model) == count_params(tiny_student)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EdgeCompressError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(EdgeCompressError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_progress_bar_is_silent_off_a_terminal() -> None:
    # dvc captures stage output: a bar would fill logs with carriage returns; the epoch line says it all.
    from edgecompress.training.loop import progress

    bar = progress(5, "[t] epoch 1/1")
    assert bar.disable and bar.total == 5
    bar.close()


def test_stage_main_closes_with_its_wall_time_and_result(capsys) -> None:
    from edgecompress.errors import friendly_main

    @friendly_main
    def main() -> str:
        return "test accuracy 0.9000"

    assert main() == "test accuracy 0.9000"
    assert re.search(r"^\[\S+\] done in \d+ s: test accuracy 0\.9000$", capsys.readouterr().err.strip())


def test_training_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.training.loop import mixed_precision, train_device

    with pytest.raises(EdgeCompressError, match=r"invalid value device='tpu': must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_device("auto").type == "cpu" and train_device("cpu").type == "cpu"
    with pytest.raises(EdgeCompressError, match=r"train.device is 'cuda:1' but PyTorch sees no CUDA GPU"):
        train_device("cuda:1")
    autocast, scaler = mixed_precision(torch.device("cpu"))
    assert not scaler.is_enabled()  # fp32 on the CPU: runs stay bit-for-bit as before
    assert isinstance(autocast(), contextlib.nullcontext)  # a no-op context where CUDA has torch.autocast
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_device("auto") == torch.device("cuda")  # auto takes the GPU when PyTorch sees one


def test_explicit_cpu_device_trains_bit_for_bit_as_auto(blobs) -> None:
    # On a machine without CUDA, device: cpu and auto are the same computation (and the one of before).
    x, y = blobs
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    torch.manual_seed(0)
    a = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2])
    b = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2])
    b.load_state_dict(a.state_dict())
    fit(a, x, y, cfg)
    fit(b, x, y, replace(cfg, device="cpu"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert next(a.parameters()).device.type == "cpu"


def test_bf16_autocast_trains_close_to_fp32(blobs, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.training import loop
    from edgecompress.training.loop import mixed_precision

    monkeypatch.setattr(loop, "_native_cpu_bf16", lambda: True)  # as on a bf16 CPU, whatever this one is
    autocast, scaler = mixed_precision(torch.device("cpu"), "bf16")
    with autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert not scaler.is_enabled()  # bf16 keeps fp32's range: no loss scaling
    with pytest.raises(EdgeCompressError, match=r"precision='fp8': must be auto, fp32 or bf16"):
        TrainConfig(precision="fp8")
    x, y = blobs
    torch.manual_seed(0)
    a = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2])
    b = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2])
    b.load_state_dict(a.state_dict())
    fit(a, x, y, TrainConfig(epochs=3, batch_size=32, lr=0.05))
    fit(b, x, y, TrainConfig(epochs=3, batch_size=32, lr=0.05, precision="bf16"))
    assert b.fc.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(a.fc.weight, b.fc.weight)
    assert abs(evaluate(a, x, y)["accuracy"] - evaluate(b, x, y)["accuracy"]) <= 0.1


def test_members_may_train_shorter_than_the_teacher() -> None:
    from edgecompress.training.teacher import TeacherConfig

    cfg = TeacherConfig(ensemble_size=3, members=(1, 2), member_epochs=4, train=TrainConfig(epochs=9, seed=5))
    assert cfg.member(0).train.epochs == 9 and cfg.member(0).train.seed == 5
    assert cfg.member(2).train.epochs == 4 and cfg.member(2).train.seed == 7
    same = TeacherConfig(ensemble_size=2, members=(1,), train=TrainConfig(epochs=9))
    assert same.member(1).train.epochs == 9
    with pytest.raises(EdgeCompressError, match="member_epochs=0"):
        TeacherConfig(member_epochs=0)


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Emulated bf16 is ~9x slower than fp32 (an AVX2 EPYC): bf16 is asked for speed, so such a CPU runs fp32."""
    from edgecompress.training import loop

    monkeypatch.setattr(loop, "_native_cpu_bf16", lambda: False)
    autocast, _ = loop.mixed_precision(torch.device("cpu"), "bf16")
    err = capsys.readouterr().err
    assert "[train] warning: precision bf16: this CPU has no native bf16" in err and "uses fp32" in err
    with autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    assert loop.precision_that_runs(torch.device("cpu"), "bf16") == "fp32"
    assert loop.precision_that_runs(torch.device("cpu"), "auto") == "auto"
    monkeypatch.setattr(loop, "_native_cpu_bf16", lambda: True)
    loop.mixed_precision(torch.device("cpu"), "bf16")
    assert capsys.readouterr().err == ""
