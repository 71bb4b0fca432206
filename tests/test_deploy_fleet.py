"""The deploy section of a profile, the device agent's release juggling, the ledger and the classifier, without SSH
(the rollouts over a loopback sshd are in test_deploy_rollout.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import tiny_export_dir
from edgecompress.cli import main as cli
from edgecompress.deploy import agent
from edgecompress.deploy.classify import Classifier
from edgecompress.deploy.ledger import DeviceState, Event, Ledger, read_ledger, write_ledger
from edgecompress.deploy.pack import pack_file
from edgecompress.deploy.targets import load_target
from edgecompress.errors import EdgeCompressError

PROFILE = {"name": "edge", "description": "", "build": {"engines": ["onnxruntime"]}, "runtime": {"threads": 1},
           "budgets": {"min_accuracy": 0.5}}


def _write(tmp: Path, deploy: Any = None, name: str = "edge") -> Path:
    (tmp / "targets").mkdir(exist_ok=True)
    path = tmp / "targets" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**PROFILE, "name": name, **({"deploy": deploy} if deploy is not None else {})}))
    return path


def test_devices_parse_with_defaults(tmp_path: Path) -> None:
    p = load_target(_write(tmp_path, {"devices": ["ssh://pi@cam1", {"url": "ssh://pi@cam1:2222", "dir": "/srv/ec",
                                                                      "python": "/home/pi/venv/bin/python"}],
                                      "parallel": 4}))
    d = p.deploy
    assert d is not None and (d.canary, d.parallel, d.min_agreement, d.smoke_images) == (1, 4, 0.99, 200)
    assert [x.id for x in d.devices] == ["ssh://pi@cam1/opt/edgecompress", "ssh://pi@cam1:2222/srv/ec"]
    assert d.devices[1].spec.python == "/home/pi/venv/bin/python" and d.devices[1].spec.port == 2222
    assert p.device.is_local  # device: (what build and check measure on) is untouched
    assert [x.id for x in d.find("ssh://pi@cam1")] == ["ssh://pi@cam1/opt/edgecompress"]


@pytest.mark.parametrize("deploy, match", [
    ({"devices": [{"url": "ssh://-oProxyCommand=touch@cam1"}]}, r"deploy.devices\[0\].url: .* is not 'local' or"),
    ({"devices": [{"url": "ssh://pi@-oProxyCommand=touch"}]}, r"deploy.devices\[0\].url"),
    ({"devices": ["ssh://pi@cam1", "ssh://pi@cam2;reboot"]}, r"deploy.devices\[1\].url"),
    ({"devices": [{"url": "ssh://pi@cam1", "dir": "opt/ec"}]}, r"deploy.devices\[0\].dir: 'opt/ec' must be an"),
    ({"devices": [{"url": "ssh://pi@cam1", "dir": "/opt/$(reboot)"}]}, r"deploy.devices\[0\].dir"),
    ({"devices": [{"url": "ssh://pi@cam1", "python": "python3 -c evil"}]}, r"deploy.devices\[0\].python"),
    ({"devices": [{"url": "ssh://pi@cam1", "key": "~/.ssh/id"}]}, r"deploy.devices\[0\].key: unknown key"),
    ({"devices": [{"dir": "/opt/ec"}]}, r"deploy.devices\[0\].url: is required"),
    ({"devices": ["local"]}, r"deploy.devices\[0\].url: 'local' cannot be deployed to"),
    ({"devices": []}, r"deploy.devices: is empty"),
    ({"devices": "ssh://pi@cam1"}, r"deploy.devices: .* must be a list"),
    ({"devices": ["ssh://pi@cam1", "ssh://pi@cam1"]}, r"deploy.devices\[1\]: ssh://pi@cam1/opt/edgecompress is listed "
                                                      r"twice"),
    ({"devices": ["ssh://pi@cam1"], "canary": 2}, r"deploy.canary: 2 is more than the 1 devices"),
    ({"devices": ["ssh://pi@cam1"], "parallel": 0}, r"deploy.parallel: 0 must be >= 1"),
    ({"devices": ["ssh://pi@cam1"], "min_agreement": 1.5}, r"deploy.min_agreement: 1.5 must be a fraction"),
    ({"devices": ["ssh://pi@cam1"], "smoke": 10}, r"deploy.smoke: unknown key"),
], ids=["user-option", "host-option", "shell-word", "relative-dir", "dir-substitution", "python-args",
        "unknown-device-key", "no-url", "local", "empty", "not-a-list", "twice", "canary", "parallel",
        "agreement", "unknown-key"])
def test_bad_deploy_sections_name_the_field(tmp_path: Path, deploy: Any, match: str) -> None:
    path = _write(tmp_path, deploy)
    with pytest.raises(EdgeCompressError, match=rf"{path}: field {match}"):
        load_target(path)


def test_cli_refuses_an_unknown_target_and_a_profile_without_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, None, "bare")
    _write(tmp_path, {"devices": ["ssh://pi@cam1"]}, "edge")
    with pytest.raises(SystemExit):
        cli(["deploy", "--target", "nosuch"])
    assert "--target nosuch: unknown target (no targets/nosuch.yaml); known: bare, edge" in capsys.readouterr().err
    for cmd in ("deploy", "status", "rollback"):
        with pytest.raises(SystemExit):
            cli([cmd, "--target", "bare"])
        assert "targets/bare.yaml: no devices listed; add a deploy section" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["rollback", "--target", "edge", "--device", "ssh://pi@cam9"])
    assert "--device ssh://pi@cam9: not in deploy.devices of targets/edge.yaml; known: ssh://pi@cam1/opt/edgecompress" \
        in capsys.readouterr().err
    assert not (tmp_path / "deploy").exists()


# --- the agent, run here on a folder (over SSH it runs the same functions) ---------------------------------

def _upload(root: Path, model: bytes, extra: bytes = b"x") -> str:
    """Stage an upload as the host does: a model's package, another file, the manifest, package.py."""
    sha = hashlib.sha256(model).hexdigest()
    inc = root / "releases" / f"{agent.INCOMING}{sha}"
    agent.prepare(root, sha)
    src = root.parent / f"m-{sha[:8]}.onnx"
    src.write_bytes(model)
    (inc / "m.onnx.ecpk").write_bytes(pack_file(src))
    (inc / "other.txt").write_bytes(extra)
    shutil.copyfile(Path(agent.__file__).with_name("package.py"), inc / "package.py")
    files = {p.name: agent.sha256_file(p) for p in inc.iterdir()}
    (inc / agent.MANIFEST).write_text(json.dumps({"model": "m.onnx", "files": {**files, "m.onnx": sha}}))
    return sha


@pytest.fixture
def models(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("m")
    out = []
    for seed in (1, 2, 3):
        (d / str(seed)).mkdir()
        tiny_export_dir(d / str(seed), seed)
        out.append((d / str(seed) / "fp32.onnx").read_bytes())
    return out


def test_agent_switches_keeps_previous_prunes_and_rolls_back(tmp_path: Path, models: list[bytes]) -> None:
    root = tmp_path / "dev"
    shas = []
    for m in models:
        sha = _upload(root, m)
        assert agent.verify(root, sha) == {"verified": sha, "model": "m.onnx"}
        agent.activate(root, sha)
        shas.append(sha)
    assert os.readlink(root / "current") == f"releases/{shas[2]}"
    assert os.readlink(root / "previous") == f"releases/{shas[1]}"
    assert sorted(p.name for p in (root / "releases").iterdir()) == sorted(shas[1:])  # the first one pruned
    assert agent.status(root) == {"current": shas[2], "previous": shas[1], "writable": True, "changed": [],
                                  "missing": []}
    assert agent.prepare(root, shas[2])["unchanged"] is True  # nothing to send again
    assert agent.rollback(root) == {"current": shas[1], "previous": shas[2]}
    assert agent.rollback(root) == {"current": shas[2], "previous": shas[1]}  # a second rollback undoes it
    (root / "current" / "other.txt").write_bytes(b"edited")
    (root / "current" / "m.onnx").unlink()
    st = agent.status(root)
    assert st["changed"] == ["other.txt"] and st["missing"] == ["m.onnx"]
    assert "unchanged" not in agent.prepare(root, shas[2])  # a damaged current is sent again


def test_agent_refuses_a_bad_upload_and_a_missing_previous(tmp_path: Path, models: list[bytes]) -> None:
    root = tmp_path / "dev"
    sha = _upload(root, models[0])
    (root / "releases" / f"{agent.INCOMING}{sha}" / "other.txt").write_bytes(b"y")
    with pytest.raises(agent.AgentError, match=r"the upload of other.txt does not match what the host sent"):
        agent.verify(root, sha)
    agent.discard(root, sha)
    _swap(root, _upload(root, models[1]), sha)
    with pytest.raises(agent.AgentError, match=r"m.onnx unpacked on the device has sha256 .*, not the built"):
        agent.verify(root, sha)
    agent.discard(root, sha)
    agent.activate(root, _upload(root, models[2]))
    with pytest.raises(agent.AgentError, match=r"has no previous release to roll back to"):
        agent.rollback(root)


def _swap(root: Path, uploaded: str, claimed: str) -> str:
    """Present the upload of ``uploaded`` as the release ``claimed``: what a wrong package looks like."""
    os.rename(root / "releases" / f"{agent.INCOMING}{uploaded}", root / "releases" / f"{agent.INCOMING}{claimed}")
    man = root / "releases" / f"{agent.INCOMING}{claimed}" / agent.MANIFEST
    doc = json.loads(man.read_text())
    doc["files"]["m.onnx"] = claimed
    man.write_text(json.dumps(doc))
    return claimed


def test_agent_main_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.main(["status", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out)["current"] is None
    assert agent.main(["activate", str(tmp_path), "../../etc"]) == 2
    assert "is not a sha256" in json.loads(capsys.readouterr().out)["error"]


def test_ledger_round_trips_and_refuses_another_target(tmp_path: Path) -> None:
    event = Event("t0", "deploy", "ssh://pi@cam1/opt/ec", "switched", "a" * 64, "student/fp32.onnx", "abc",
                  {"agreement": 1.0})
    led = Ledger("edge").record(event, DeviceState("a" * 64, None, "student/fp32.onnx", "t0"))
    write_ledger(tmp_path / "edge.json", led)
    assert read_ledger(tmp_path / "edge.json", "edge") == led
    assert read_ledger(tmp_path / "none.json", "edge") == Ledger("edge")
    with pytest.raises(EdgeCompressError, match=r"is the ledger of target 'edge', not 'pi'"):
        read_ledger(tmp_path / "edge.json", "pi")


def test_classifier_reads_the_sidecar_and_names_the_class(tmp_path: Path) -> None:
    d, testset, _ = tiny_export_dir(tmp_path, seed=5)
    side = json.loads((d / "fp32.onnx.json").read_text())
    (d / "fp32.onnx.json").write_text(json.dumps({**side, "class_names": ["a", "b", "c"]}))
    (d / "MANIFEST.json").write_text(json.dumps({"model": "fp32.onnx", "files": {}}))
    clf = Classifier(d)
    x = np.load(testset)["x"][:8]
    from edgecompress.deploy.runner import load_session, postprocess, preprocess

    logits = postprocess(load_session(d / "fp32.onnx").run(preprocess(x, clf.sidecar)), clf.sidecar)
    for img, row in zip(x, logits):
        p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        got = clf.classify(img, top=3)
        assert got["class"] == "abc"[int(p.argmax())] and got["probability"] == pytest.approx(p.max(), abs=1e-6)
        assert [n for n, _ in got["top"]] == ["abc"[k] for k in np.argsort(-p)]
        assert clf.classify(img[0])["class"] == got["class"]  # (H, W) for one channel
    with pytest.raises(Exception, match=r"give uint8 pixels"):
        clf.classify(x[0].astype(np.float32))


# --- the rollout's order, with the devices' work stubbed (the real thing: test_deploy_rollout.py) -----------

def test_canary_then_waves_and_a_failed_wave_switches_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.deploy import rollout
    from edgecompress.deploy.release import Release

    profile = load_target(_write(tmp_path, {"devices": [f"ssh://pi@cam{i}" for i in range(6)], "parallel": 2}))
    assert [[d.id[12] for d in w] for w in rollout._waves(profile.deploy.devices, 1, 2)] == [  # type: ignore
        ["0"], ["1", "2"], ["3", "4"], ["5"]]
    release = Release("edge", "student/fp32.onnx", "fp32.onnx", "a" * 64, (), 1, (), (0,), 0.1)
    fate = {"cam0": "ready", "cam1": "ready", "cam2": "unreachable", "cam3": "ready", "cam4": "failed"}
    switched, discarded = [], []

    def prepare(_p: Any, _r: Any, dev: Any) -> Any:
        failed = fate[dev.spec.host] == "failed"
        return rollout.Outcome(dev, fate[dev.spec.host], "b" * 64, {"agreement": 1.0}, "boom" if failed else None)

    monkeypatch.setattr(rollout, "_prepare", prepare)
    monkeypatch.setattr(rollout._Device, "agent", lambda s, cmd, step, sha=None: switched.append(s.fleet.spec.host))
    monkeypatch.setattr(rollout, "_discard", lambda s, r: discarded.append(s.fleet.spec.host))
    monkeypatch.setattr(rollout, "git_commit", lambda: "c0ffee")
    with pytest.raises(EdgeCompressError, match=r"^boom; every device not switched stays on its previous release"):
        rollout.deploy(profile, release, tmp_path / "ledger.json")
    assert switched == ["cam0", "cam1"] and discarded == ["cam3"]  # cam3 passed, but its wave did not
    events = read_ledger(tmp_path / "ledger.json", "edge").events
    assert [(e.device[9:13], e.outcome) for e in events] == [
        ("cam0", "switched"), ("cam1", "switched"), ("cam2", "unreachable"), ("cam3", "not switched"),
        ("cam4", "failed"), ("cam5", "not tried")]
    assert {e.commit for e in events} == {"c0ffee"}
    assert events[-1].detail == "rollout stopped: ssh://pi@cam4/opt/edgecompress failed"
