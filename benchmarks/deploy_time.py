"""How long does `edgecompress deploy` take for one target and one device? Over a loopback sshd (the test
suite's fixture), each repeat a first install into an empty install dir, timed in two parts: the host's
side (read the build, unpack the package, stage, score the smoke images) and the rollout (upload, unpack
and verify on the device, smoke test there, switch, write the ledger).

    python benchmarks/deploy_time.py [--target host] [--artifacts models/targets/host]
                                     [--images models/candidates/valset.npz] [--repeats 5]

Needs the target's build (`dvc repro build@host`) and OpenSSH (sshd, ssh, scp). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback sshd fixture

from test_remote import serve_sshd  # noqa: E402

from edgecompress.deploy.fleet import parse_deploy  # noqa: E402
from edgecompress.deploy.release import prepare_release  # noqa: E402
from edgecompress.deploy.rollout import deploy  # noqa: E402
from edgecompress.deploy.targets import load_target  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--artifacts", help="the build's output (default models/targets/<target>)")
    ap.add_argument("--images", default=str(ROOT / "models/candidates/valset.npz"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    build = Path(args.artifacts or ROOT / "models/targets" / args.target)
    base = load_target(ROOT / "targets" / f"{args.target}.yaml")
    host_s, rollout_s = [], []
    with tempfile.TemporaryDirectory() as tmp, serve_sshd(Path(tmp)) as srv:
        for i in range(args.repeats):
            work = Path(tmp) / f"run{i}"
            (work / "stage").mkdir(parents=True)
            spec = parse_deploy({"devices": [{"url": srv.url, "key_file": str(srv.key), "known_hosts":
                                              str(srv.known_hosts), "python": sys.executable,
                                              "dir": str(work / "device")}]})
            profile = base.__class__(**{**base.__dict__, "deploy": spec})
            t0 = time.perf_counter()
            release = prepare_release(profile, build, args.images, work / "stage", spec.smoke_images)
            t1 = time.perf_counter()
            out = deploy(profile, release, work / "ledger.json")
            t2 = time.perf_counter()
            assert [o.outcome for o in out] == ["switched"], out
            host_s.append(t1 - t0)
            rollout_s.append(t2 - t1)
    total = [a + b for a, b in zip(host_s, rollout_s)]
    print(f"target {args.target}: {release.artifact}, package {release.package_bytes} bytes, "
          f"{len(release.reference)} smoke images, {args.repeats} first installs over loopback ssh\n")
    print("| part | median s | min s | max s |\n|---|---|---|---|")
    for name, xs in (("host side (unpack, stage, host smoke run)", host_s),
                     ("rollout (upload, verify, device smoke run, switch, ledger)", rollout_s), ("total", total)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
