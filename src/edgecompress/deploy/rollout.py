"""Roll a target's release out to its devices over SSH; roll back; ask each device what it runs.

Per device: upload into ``<dir>/releases/.incoming-<sha256>``, unpack and check every sha256 there
(deploy/agent.py), run the smoke test there, and only then rename it to ``releases/<sha256>`` and swap
``current`` (keeping ``previous``). The canary devices go first; the rest follow in waves of
``deploy.parallel``, each wave prepared at once and switched only when all of it passed, so a failure
stops the rollout with every device it did not switch on its previous release. A device that cannot be
reached is reported and skipped; it was never touched. Every outcome goes to the ledger.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.deploy.bench import parse_runner_output
from edgecompress.deploy.fleet import DeploySpec, FleetDevice
from edgecompress.deploy.ledger import DeviceState, Event, git_commit, now, read_ledger, write_ledger
from edgecompress.deploy.release import Release
from edgecompress.deploy.remote import UNREACHABLE, Session, copy_files, last_lines
from edgecompress.deploy.stats import wilson
from edgecompress.deploy.targets import TargetProfile

log = get_logger("deploy")
AGENT = Path(__file__).resolve().parent / "agent.py"
INCOMING = ".incoming-"


class Unreachable(EdgeCompressError):
    """The device's host or port could not be reached: nothing on it was touched."""


class _Device(Session):
    """The check's SSH session, with messages that name the device's deploy entry."""

    def __init__(self, profile: TargetProfile, device: FleetDevice) -> None:
        super().__init__(profile, device.spec)
        self.fleet = device

    def fail(self, what: str) -> EdgeCompressError:
        return EdgeCompressError(f"device {self.fleet.id}: {what}")

    def setting(self, field: str) -> str:
        return f"{self.fleet.field('dir' if field == 'work_dir' else field)} in {self.profile.where}"

    def _timeout(self) -> EdgeCompressError:
        self.timed_out = True
        return self.fail(f"the deploy steps did not finish within {self.device.timeout:g} s; raise "
                         f"{self.setting('timeout')} for a slow link or board")

    def _connection_error(self, stderr: str, step: str) -> None:
        if any(s in stderr for s in UNREACHABLE):
            raise Unreachable(f"device {self.fleet.id}: cannot reach {self.device.host} port {self.device.port or 22} "
                              f"({last_lines(stderr)}); check that it is on and on the network, and "
                              f"{self.setting('url')}")
        super()._connection_error(stderr, step)

    def agent(self, command: str, step: str, sha: str | None = None) -> dict[str, Any]:
        """Run deploy/agent.py's ``command`` on the device (sent inline: nothing of it needs to be there)."""
        argv = [self.device.python, "-c", AGENT.read_text(), command, self.fleet.dir, *([sha] if sha else [])]
        proc = self.ssh(shlex.join(argv), step)
        return self.answer(proc.stdout, proc.stderr, proc.returncode, step)

    def answer(self, stdout: str, stderr: str, code: int, step: str) -> dict[str, Any]:
        out = parse_runner_output(stdout)
        if out is None and code in (126, 127):
            raise self.fail(f"{step}: the python {self.device.python!r} was not found on the device; install "
                            f"python3 there or set {self.setting('python')}")
        if out is None or "error" in out:
            why = (out or {}).get("error") or last_lines(stderr) or f"exit code {code}"
            if "No module named 'numpy'" in stderr:
                why = f"numpy is missing for {self.device.python}; run {self.device.python} -m pip install numpy there"
            raise self.fail(f"{step}: {why}")
        return out


@dataclass(frozen=True)
class Outcome:
    """What happened on one device."""

    device: FleetDevice
    outcome: str  # ready (verified, not yet switched) | switched | unchanged | failed | unreachable | not tried
                  #   | not switched (passed, but its wave did not) | rolled back
    before: str | None = None  # its current release before
    smoke: dict[str, Any] | None = None
    detail: str | None = None


def _check_and_smoke(s: _Device, release: Release, incoming: str) -> dict[str, Any]:
    """In one ssh call: the agent checks the upload's sha256s and unpacks it, then the runner (the copy just
    checked) scores the smoke images; their answers are compared with the host's."""
    verify = shlex.join([s.device.python, "-c", AGENT.read_text(), "verify", s.fleet.dir, release.sha256])
    run = shlex.join([s.device.python, "runner.py", *release.smoke_args])
    proc = s.ssh(f"{verify} && cd {shlex.quote(incoming)} && exec {run}", "checking the upload")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    s.answer(lines[0] if lines else "", proc.stderr, proc.returncode if len(lines) < 2 else 0, "checking the upload")
    out = s.answer(lines[-1] if len(lines) > 1 else "", proc.stderr, proc.returncode, "the smoke test")
    guess = np.asarray(out.get("guess", []))
    n = len(release.reference)
    if len(guess) != n:
        raise s.fail(f"the smoke test answered {len(guess)} images, not the {n} sent")
    agreement = float((guess == np.asarray(release.reference)).mean())
    return {"images": n, "agreement": agreement, "agreement_ci": wilson(agreement, n).to_json(),
            "device_ms_per_image": round(1000 * out["seconds"] / n, 4),
            "host_ms_per_image": round(release.host_ms_per_image, 4), "runtime": out.get("runtime")}


def _prepare(profile: TargetProfile, release: Release, dev: FleetDevice) -> Outcome:
    """Everything short of switching: upload, verify, smoke. Never raises: a failure is an Outcome."""
    s = _Device(profile, dev)
    incoming = f"{dev.dir.rstrip('/')}/releases/{INCOMING}{release.sha256}"
    try:
        st = s.agent("prepare", f"preparing {dev.dir} ({s.setting('dir')})", release.sha256)
    except Unreachable as e:
        return Outcome(dev, "unreachable", detail=str(e))
    except EdgeCompressError as e:
        return Outcome(dev, "failed", detail=str(e))
    if st.get("unchanged"):
        return Outcome(dev, "unchanged", st["current"], detail="already runs this release")
    try:
        copy_files(s, list(release.staged), incoming)
        smoke = _check_and_smoke(s, release, incoming)
    except EdgeCompressError as e:
        _discard(_Device(profile, dev), release)  # a fresh session: this one may have run out of time
        return Outcome(dev, "unreachable" if isinstance(e, Unreachable) else "failed", st["current"], detail=str(e))
    least = devices_of(profile).min_agreement
    if smoke["agreement"] < least:  # judged on the count itself: 99% of 200 images is at most 2 disagreements
        _discard(s, release)
        return Outcome(dev, "failed", st["current"], {**smoke, "min_agreement": least}, str(s.fail(
            f"the smoke test failed: the device agrees with the host's run of {release.model} on "
            f"{smoke['agreement']:.1%} of {smoke['images']} images, below deploy.min_agreement {least:.1%}; is the "
            f"package the model the build chose? nothing was switched")))
    return Outcome(dev, "ready", st["current"], {**smoke, "min_agreement": least})


def _discard(s: _Device, release: Release) -> None:
    try:
        s.agent("discard", "removing the failed upload", release.sha256)
    except EdgeCompressError as e:  # the upload stays in releases/.incoming-*; never pointed to
        log.warning(f"{e}")


def _waves(devices: tuple[FleetDevice, ...], canary: int, parallel: int) -> list[tuple[FleetDevice, ...]]:
    rest = devices[canary:]
    return [devices[:canary], *(rest[i:i + parallel] for i in range(0, len(rest), parallel))]


def _wave(profile: TargetProfile, release: Release, wave: tuple[FleetDevice, ...],
          parallel: int) -> tuple[list[Outcome], str | None]:
    """Prepare ``wave`` at once, then switch its ready devices, none of them once one failed; the outcomes
    and, after a failure, why the rollout stops."""
    with ThreadPoolExecutor(max_workers=min(parallel, len(wave))) as pool:
        done = list(pool.map(lambda d: _prepare(profile, release, d), wave))
    failed = next((o for o in done if o.outcome == "failed"), None)
    stop = f"rollout stopped: {failed.device.id} failed" if failed else None
    out = []
    for o in done:
        if o.outcome == "ready" and stop:  # verified, but its wave did not pass: never switched
            _discard(_Device(profile, o.device), release)
            o = Outcome(o.device, "not switched", o.before, o.smoke, stop)
        elif o.outcome == "ready":
            try:
                _Device(profile, o.device).agent("activate", "switching current", release.sha256)
                o = Outcome(o.device, "switched", o.before, o.smoke)
            except EdgeCompressError as e:
                o = Outcome(o.device, "failed", o.before, o.smoke, str(e))
                stop = f"rollout stopped: {o.device.id} failed"
        out.append(o)
    return out, stop


def deploy(profile: TargetProfile, release: Release, ledger_path: str | Path) -> list[Outcome]:
    """Roll ``release`` out to ``profile.deploy.devices``; write the ledger; raise on a failed device
    (after writing it). Unreachable devices are skipped and reported in the outcomes."""
    spec = devices_of(profile)
    outcomes: list[Outcome] = []
    stop: str | None = None
    for k, wave in enumerate(_waves(spec.devices, spec.canary, spec.parallel)):
        if stop:
            outcomes += [Outcome(d, "not tried", detail=stop) for d in wave]
            continue
        done, stop = _wave(profile, release, wave, spec.parallel)
        outcomes += done
        if k == 0 and not stop and all(o.outcome == "unreachable" for o in done):
            stop = "rollout stopped: no canary device could be reached, so nothing proved the release on a device"
    _record(profile, release, outcomes, ledger_path)
    bad = next((o for o in outcomes if o.outcome == "failed"), None)
    if bad is not None or stop:
        raise EdgeCompressError(f"{(bad.detail if bad else None) or stop}; every device not switched stays on its "
                                f"previous release (ledger: {ledger_path})")
    return outcomes


def _record(profile: TargetProfile, release: Release, outcomes: list[Outcome], path: str | Path) -> None:
    ledger, commit, when = read_ledger(path, profile.name), git_commit(), now()
    for o in outcomes:
        state = None
        if o.outcome in ("switched", "unchanged"):
            old = ledger.devices.get(o.device.id)
            previous = o.before if o.outcome == "switched" else (old.previous if old else None)
            state = DeviceState(release.sha256, previous if previous != release.sha256 else None,
                                release.artifact, when)
        ledger = ledger.record(Event(when, "deploy", o.device.id, o.outcome, release.sha256, release.artifact,
                                     commit, o.smoke, o.detail), state)
    write_ledger(path, ledger)


def dry_run(profile: TargetProfile, release: Release) -> list[str]:
    """What a deploy would do on each device, from read-only questions to them; nothing is written."""
    spec = devices_of(profile)
    lines = []
    for k, wave in enumerate(_waves(spec.devices, spec.canary, spec.parallel)):
        for d in wave:
            step = "canary" if k == 0 else f"wave {k}"
            try:
                st = _Device(profile, d).agent("status", "reading the install dir")
            except EdgeCompressError as e:
                lines.append(f"{d.id} ({step}): would be skipped: {e}")
                continue
            if st["current"] == release.sha256 and not st["changed"] and not st["missing"]:
                lines.append(f"{d.id} ({step}): already runs {release.sha256[:12]}; nothing to do")
            elif not st["writable"]:
                lines.append(f"{d.id} ({step}): would fail: {d.dir} is not writable ({d.field('dir')})")
            else:
                lines.append(f"{d.id} ({step}): would copy {len(release.staged)} files ({release.package_bytes} "
                             f"bytes of package) to {d.dir}/releases/{release.sha256[:12]}..., verify the sha256, "
                             f"smoke-test {len(release.reference)} images (>= {spec.min_agreement:.1%} agreement), "
                             f"switch current from {(st['current'] or 'none')[:12]}")
    return lines


def devices_of(profile: TargetProfile) -> DeploySpec:
    """The profile's deploy section; a profile without one is an error that shows how to add it."""
    if profile.deploy is None:
        raise EdgeCompressError(f"{profile.where}: no devices listed; add a deploy section, e.g. deploy: "
                                f"{{devices: [{{url: ssh://pi@cam1, dir: /opt/edgecompress}}]}} (docs/deploying.md)")
    return profile.deploy


def _select(profile: TargetProfile, device: str | None) -> tuple[FleetDevice, ...]:
    spec = devices_of(profile)
    if device is None:
        return spec.devices
    found = spec.find(device)
    if not found:
        raise EdgeCompressError(f"--device {device}: not in deploy.devices of {profile.where}; known: "
                                f"{', '.join(d.id for d in spec.devices)}")
    return tuple(found)


def rollback(profile: TargetProfile, ledger_path: str | Path, device: str | None = None) -> list[Outcome]:
    """Switch ``current`` back to ``previous`` on the devices (all, or those ``device`` names), one by one;
    the ledger is written even when one fails (which stops the rest)."""
    ledger, commit = read_ledger(ledger_path, profile.name), git_commit()
    outcomes, error = [], None
    for d in _select(profile, device):
        try:
            got = _Device(profile, d).agent("rollback", "rolling back")
        except EdgeCompressError as e:
            error = e
            break
        when = now()
        old = ledger.devices.get(d.id)
        ledger = ledger.record(Event(when, "rollback", d.id, "rolled back", got["current"], None, commit, None,
                                     f"from {got['previous']}"),
                               DeviceState(got["current"], got["previous"], old.artifact if old else None, when))
        outcomes.append(Outcome(d, "rolled back", got["previous"], detail=f"current is {got['current']}"))
    write_ledger(ledger_path, ledger)
    if error is not None:
        raise error
    return outcomes


def status(profile: TargetProfile, ledger_path: str | Path) -> list[dict[str, Any]]:
    """Per device: what it runs, what the ledger says it runs, and the drift between them (read only)."""
    ledger = read_ledger(ledger_path, profile.name)
    rows = []
    for d in devices_of(profile).devices:
        want = ledger.devices.get(d.id)
        row: dict[str, Any] = {"device": d.id, "ledger": want.current if want else None}
        try:
            st = _Device(profile, d).agent("status", "reading the install dir")
        except Unreachable as e:
            rows.append({**row, "current": None, "state": "unreachable", "drift": [str(e)]})
            continue
        drift = [f"{name} changed by hand" for name in st["changed"]] + [f"{name} missing" for name in st["missing"]]
        if (want.current if want else None) != st["current"]:
            drift.insert(0, f"current is {st['current'] or 'none'}, the ledger says {row['ledger'] or 'none'}")
        rows.append({**row, "current": st["current"], "previous": st["previous"],
                     "state": "drift" if drift else "ok", "drift": drift})
    return rows
