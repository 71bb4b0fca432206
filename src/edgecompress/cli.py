"""The ``edgecompress`` command: run a target check by hand, validate params and targets, inspect artifacts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.fileio import read_json
from edgecompress.log import set_verbosity


def _check(ns: argparse.Namespace) -> None:
    from edgecompress.verdict import check_and_report

    name = Path(ns.target).stem
    out_json = ns.out_json or f"reports/manual/{name}.json"
    out_md = ns.out_md or f"reports/manual/{name}.md"
    built = Path("models/targets") / name
    artifacts = ns.artifacts or (str(built) if (built / "build.json").is_file() else "models/export")
    default_testset = "models/candidates/testset.npz" if (Path(artifacts) / "build.json").is_file() else \
        str(Path(artifacts) / "testset.npz")
    check_and_report(ns.target, artifacts, ns.testset or default_testset, out_json, out_md, ns.strict,
                     _device(ns), teacher=ns.teacher)


def _device(ns: argparse.Namespace) -> dict[str, str] | None:
    """Only the options given override the profile's device (a bare --device keeps its key/timeout)."""
    device = {k: v for k, v in (("url", ns.device), ("key_file", ns.key_file), ("python", ns.remote_python))
              if v is not None}
    return device or None


def _build(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.build import MeasurementCache, build_target
    from edgecompress.deploy.build_report import render_markdown
    from edgecompress.deploy.frontier_plot import frontier_svg
    from edgecompress.deploy.targets import load_target
    from edgecompress.fileio import write_text

    profile = load_target(ns.target)
    out = ns.out or f"models/targets/{profile.name}"
    record = build_target(profile, ns.candidates, out, MeasurementCache(ns.cache), _device(ns),
                          ns.strict, ns.exhaustive, not ns.no_predict)
    md_path = Path(ns.out_md or f"reports/manual/build-{profile.name}.md")
    svg = md_path.with_suffix(".frontier.svg")  # beside the report, which links it by name
    write_text(svg, frontier_svg(record, profile.budgets))
    md = render_markdown(record, profile.budgets, svg.name)
    write_text(md_path, md)
    print(md)
    if record.error:
        raise EdgeCompressError(record.error)


def _targets(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.targets import load_target

    paths = ns.paths or sorted(Path("targets").glob("*.yaml"))
    if not paths:
        raise EdgeCompressError(f"no target profiles in {Path('targets').resolve()}; run from the repository "
                                f"root (where dvc.yaml is) or name the profile files")
    for path in paths:
        t = load_target(path)
        if t.build is None:
            what = f"pinned {t.artifact.format} {t.artifact.precision} on {t.runtime.engine}"  # type: ignore[union-attr]
        else:
            models = t.build.models if t.build.models == "all" else ", ".join(t.build.models)
            what = (f"builds from {models} models, {'/'.join(t.build.precisions)} on "
                    f"{'/'.join(t.build.engines)}")
        print(f"{path}: ok ({t.name}: {what}, device {t.device.url})")


def _validate(ns: argparse.Namespace) -> None:
    from edgecompress.config import load_params
    from edgecompress.validate import validate_params

    cfg = validate_params(load_params(ns.params), ns.params, ns.targets)
    print(f"{ns.params}: ok ({', '.join(cfg)}; targets {', '.join(cfg['check'].targets) or 'none'})")


def _select(ns: argparse.Namespace) -> None:
    from edgecompress.active.select import SelectConfig, run_selection
    from edgecompress.config import from_dict

    cfg = from_dict(SelectConfig, {"strategy": ns.strategy, "budget": ns.budget, "mc_samples": ns.mc_samples,
                                   "seed": ns.seed}, "edgecompress select")
    out = ns.out or "reports/to_label.csv"
    sheet = ns.sheet or str(Path(out).with_suffix(".png"))
    if ns.artifact:  # scored where the images were seen, by the artifact's own runtime
        from edgecompress.active.device import select_on_device
        from edgecompress.deploy.devices import resolve_device
        from edgecompress.deploy.targets import load_target

        if not ns.target:
            raise EdgeCompressError("--artifact needs --target: the profile says which runtime, threads and device")
        profile = load_target(ns.target)
        summary = select_on_device(ns.pool, ns.artifact, profile, resolve_device(profile.device, _device(ns)),
                                   cfg.strategy, cfg.budget, out, sheet)
    else:
        summary = run_selection(ns.pool, ns.model or ["models/student.pt"], cfg, out, sheet, ns.labeled)
    print(f"{summary['budget']} of {summary['pool_size']} images chosen by {summary['strategy']} -> {summary['csv']} "
          f"(contact sheet {summary['sheet']}); the model's guesses per class: {summary['class_histogram']}")


def _add_labels(ns: argparse.Namespace) -> None:
    from edgecompress.active.labels import merge_labels

    done = merge_labels(ns.csv, ns.pool, ns.dataset)
    print(f"added {done['added']} labelled images to {done['train']} ({done['per_class']}); `dvc repro` "
          f"retrains on them (data.path is a dependency of every stage that reads the images)")


def _inspect(ns: argparse.Namespace) -> None:
    path = Path(ns.artifact)
    side = Path(str(path) + ".json")
    if not path.exists():
        raise EdgeCompressError(f"{path} not found; give a checkpoint (models/*.pt) or an exported artifact "
                                f"(models/export/*.onnx, *.tflite)")
    if not side.exists():
        raise EdgeCompressError(f"{path} has no sidecar {side}: checkpoints (models/*.pt) and exported artifacts "
                                f"(models/export/*.onnx, *.tflite) have one, other files do not; if {path} is one "
                                f"of those, re-run the stage that writes it (dvc repro)")
    print(json.dumps(read_json(side, "sidecar"), indent=2))


def _pack(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.pack import pack_file
    from edgecompress.deploy.package import PACKAGE_SUFFIX, PackageError, package_stats
    from edgecompress.fileio import atomic_path

    model = Path(ns.model)
    out = Path(ns.out or f"{ns.model}{PACKAGE_SUFFIX}")
    if not model.is_file():
        raise EdgeCompressError(f"{model} {'is a directory' if model.is_dir() else 'not found'}; give one exported "
                                f"model file, e.g. models/export/fp32.onnx")
    _not_a_dir(out, "package", f"{model.name}{PACKAGE_SUFFIX}")
    try:
        pkg = pack_file(model)
        with atomic_path(out) as tmp:
            tmp.write_bytes(pkg)
    except PackageError as e:
        raise EdgeCompressError(str(e)) from e
    except OSError as e:  # unreadable model, read-only or odd output folder
        raise EdgeCompressError(f"{model}: packing into {out} failed ({e.strerror}: {e.filename}); give a readable "
                                f"model and an --out in a writable folder") from e
    stats = package_stats(pkg)
    coded = sum(r["kind"].startswith("huffman") for r in stats["runs"])
    print(f"{ns.model}: {stats['file']} -> {stats['package']} bytes ({stats['file'] / stats['package']:.1f}x; "
          f"{coded} of {len(stats['runs'])} weight tensors Huffman-coded) -> {out}")


def _not_a_dir(out: Path, what: str, example: str) -> None:
    """An output path that is a folder: one error naming it (writing would fail late with IsADirectoryError)."""
    if out.is_dir():
        raise EdgeCompressError(f"{out} is a directory; give the {what} file to write with --out, e.g. "
                                f"{out / example}")


def _unpack(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.package import PackageError, unpack_file

    pkg = Path(ns.package)
    if not pkg.is_file():
        raise EdgeCompressError(f"{pkg} {'is a directory' if pkg.is_dir() else 'not found'}; give a package "
                                f"written by `edgecompress pack` (e.g. models/targets/<name>/int8.onnx.ecpk)")
    if ns.out is not None:
        _not_a_dir(Path(ns.out), "model", pkg.name.removesuffix(".ecpk"))
    try:
        out = unpack_file(pkg, ns.out)
    except PackageError as e:
        raise EdgeCompressError(f"{pkg}: {e}") from e
    except OSError as e:  # the output: a folder by that name, a missing or read-only folder
        where = e.filename2 or e.filename or ns.out
        if e.filename is not None and Path(e.filename) == pkg:
            raise EdgeCompressError(f"{pkg} cannot be read ({e.strerror})") from e
        raise EdgeCompressError(f"{pkg}: cannot write the restored model ({e.strerror}: {where}); give --out a "
                                f"file path in a writable folder") from e
    print(f"{pkg} -> {out} (size and sha256 verified)")


def _target(target: str):  # type: ignore[no-untyped-def]
    """A profile by file (targets/pi.yaml) or by name (pi); an unknown name lists the known ones."""
    from edgecompress.deploy.targets import load_target

    path = Path(target)
    if not path.is_file() and path.suffix != ".yaml" and "/" not in target:
        path = Path("targets") / f"{target}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in Path("targets").glob("*.yaml"))) or "none in ./targets"
            raise EdgeCompressError(f"--target {target}: unknown target (no {path}); known: {known}")
    return load_target(path)


def _ledger(ns: argparse.Namespace, name: str) -> str:
    return ns.ledger or f"deploy/{name}.json"


def _deploy(ns: argparse.Namespace) -> None:
    import tempfile

    from edgecompress.deploy.release import prepare_release
    from edgecompress.deploy.rollout import deploy, devices_of, dry_run

    profile = _target(ns.target)
    spec = devices_of(profile)  # before any work on the host
    with tempfile.TemporaryDirectory(prefix="edgecompress-release-") as tmp:
        release = prepare_release(profile, ns.artifacts or f"models/targets/{profile.name}", ns.images, Path(tmp),
                                  spec.smoke_images)
        if ns.dry_run:
            for line in dry_run(profile, release):
                print(f"dry run: {line}")
            print("dry run: nothing was copied, switched or recorded")
            return
        outcomes = deploy(profile, release, _ledger(ns, profile.name))
    for o in outcomes:
        smoke = (f"; smoke {o.smoke['agreement']:.1%} of {o.smoke['images']} images, "
                 f"{o.smoke['device_ms_per_image']:.2f} ms/image" if o.smoke else "")
        print(f"{o.device.id}: {o.outcome}{smoke}{f' ({o.detail})' if o.detail else ''}")
    print(f"{profile.name}: release {release.sha256[:12]} ({release.artifact}); ledger {_ledger(ns, profile.name)}")


def _rollback(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.rollout import rollback

    profile = _target(ns.target)
    for o in rollback(profile, _ledger(ns, profile.name), ns.device):
        print(f"{o.device.id}: rolled back from {(o.before or 'none')[:12]}; {o.detail}")


def _status(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.rollout import status

    profile = _target(ns.target)
    rows = status(profile, _ledger(ns, profile.name))
    for r in rows:
        cur = (r["current"] or "none")[:12]
        print(f"{r['device']}: {r['state']}, current {cur}" + "".join(f"; {d}" for d in r["drift"]))
    drifted = [r["device"] for r in rows if r["state"] == "drift"]
    if drifted:
        raise EdgeCompressError(f"{len(drifted)} device(s) differ from the ledger: {', '.join(drifted)}; deploy "
                                f"again to restore them")


def _device_prepare(ns: argparse.Namespace) -> None:
    from edgecompress.deploy.emulate import check_arch
    from edgecompress.deploy.prepare import prepare, runtime_pins

    check_arch(ns.arch)  # before anything else: an unknown arch is the first thing to say
    done = prepare(ns.arch, ns.cache, runtime_pins(ns.runtime or (), ns.arch), ns.mirror)
    m = done.manifest
    runtimes = ", ".join(f"{k} {v}" for k, v in m.runtimes.items())
    how = "already prepared" if done.action == "ready" else \
        f"{done.action}{f' ({done.why})' if done.why and done.action != 'built' else ''} in " \
        f"{m.seconds.get('total', 0):.0f} s"
    print(f"emulate:{m.arch}: {how}: {done.root} (Debian {m.suite}, python {m.python}, numpy {m.numpy}, "
          f"{runtimes}; qemu {m.qemu_version} -cpu {m.qemu_cpu}); use it with --device emulate:{m.arch}")


@friendly_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="edgecompress", description=__doc__)
    loud = p.add_mutually_exclusive_group()  # before the command: `edgecompress -q build ...`
    loud.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity", default=0,
                      help="warnings and errors only (no progress lines); the command's result still prints")
    loud.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                      help="debug detail too")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check one target profile's budgets (same code as the DVC stage)")
    c.add_argument("--target", required=True, help="target profile YAML, e.g. targets/raspberry-pi.yaml")
    c.add_argument("--artifacts", help="artifact directory (default: models/targets/<name> when built there, "
                                       "else models/export)")
    c.add_argument("--testset", help="test .npz (default: models/candidates/testset.npz for a build, "
                                     "else <artifacts>/testset.npz)")
    c.add_argument("--out-json")
    c.add_argument("--out-md")
    c.add_argument("--strict", action="store_true", help="fail on a missed budget even on proxy hardware")
    c.add_argument("--teacher", default="models/teacher.pt",
                   help="teacher checkpoint, the reference of budgets.max_drop (default models/teacher.pt)")
    c.add_argument("--device", help="run on this device instead of the profile's: local, ssh://user@host[:port] "
                                    "or emulate:aarch64|armv7 (edgecompress device prepare)")
    c.add_argument("--key-file", help="ssh private key for the device (default: the profile's, else ssh's own)")
    c.add_argument("--remote-python", help="python interpreter on the device (default: the profile's, else python3)")
    c.set_defaults(fn=_check)
    b = sub.add_parser("build", help="build one target by hand: measure the candidate pool on its device, choose")
    b.add_argument("--target", required=True, help="target profile YAML, e.g. targets/raspberry-pi.yaml")
    b.add_argument("--candidates", default="models/candidates", help="candidate pool (default models/candidates)")
    b.add_argument("--out", help="directory for the chosen artifact (default models/targets/<name>)")
    b.add_argument("--out-md", help="build report (default reports/manual/build-<name>.md)")
    b.add_argument("--cache", help="measurement cache (default .cache/measurements or $EDGECOMPRESS_CACHE)")
    b.add_argument("--exhaustive", action="store_true", help="measure every allowed candidate, not only those that can win")
    b.add_argument("--no-predict", action="store_true",
                   help="measure every candidate that can win; by default the latency model, fitted on this "
                        "machine's measurement cache, skips those predicted confidently over a latency budget")
    b.add_argument("--strict", action="store_true", help="fail when nothing fits even on proxy hardware")
    b.add_argument("--device", help="measure on this device instead of the profile's: local, "
                                    "ssh://user@host[:port] or emulate:aarch64|armv7 (edgecompress device prepare)")
    b.add_argument("--key-file", help="ssh private key for the device")
    b.add_argument("--remote-python", help="python interpreter on the device (default python3)")
    b.set_defaults(fn=_build)
    t = sub.add_parser("targets", help="validate target profiles (default: targets/*.yaml)")
    t.add_argument("paths", nargs="*")
    t.set_defaults(fn=_targets)
    v = sub.add_parser("validate", help="check params.yaml and the checked target profiles (what dvc repro runs first)")
    v.add_argument("--params", default="params.yaml")
    v.add_argument("--targets", default="targets", help="directory of target profiles (default targets)")
    v.set_defaults(fn=_validate)
    from edgecompress.active.strategies import STRATEGIES

    s = sub.add_parser("select", help="choose which unlabeled images to label next (active learning)")
    s.add_argument("--pool", required=True, help="a folder of images or an .npz with x: the unlabeled pool")
    s.add_argument("--budget", type=int, required=True, help="how many images to choose")
    s.add_argument("--strategy", default="entropy", choices=list(STRATEGIES))
    s.add_argument("--model", action="append", help="checkpoint (default models/student.pt); repeat it for an "
                                                    "ensemble's members (bald then uses their disagreement)")
    s.add_argument("--labeled", help="images labeled so far (.npz with x, or a folder): k-center's first centres")
    s.add_argument("--mc-samples", type=int, default=10, help="MC-dropout passes for bald on one network")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--artifact", help="score on a device instead: an exported artifact (e.g. models/export/"
                                      "heads.tflite) run by the standalone runner there (entropy, "
                                      "least_confidence, bald)")
    s.add_argument("--target", help="with --artifact: the target profile (runtime, threads, device)")
    s.add_argument("--device", help="with --artifact: local, ssh://user@host[:port] or emulate:aarch64|armv7 "
                                    "(default: the profile's)")
    s.add_argument("--key-file", help="ssh private key for the device")
    s.add_argument("--remote-python", help="python interpreter on the device (default python3)")
    s.add_argument("--out", help="the list to label (default reports/to_label.csv)")
    s.add_argument("--sheet", help="contact sheet PNG (default: the CSV's name with .png)")
    s.set_defaults(fn=_select)
    a = sub.add_parser("add-labels", help="copy the images labelled in to_label.csv into an imagefolder dataset")
    a.add_argument("--csv", default="reports/to_label.csv", help="the list select wrote, its label column filled in")
    a.add_argument("--pool", required=True, help="the pool it was chosen from (folder or .npz)")
    a.add_argument("--dataset", required=True, help="the imagefolder dataset (data.path): images go to train/<label>/")
    a.set_defaults(fn=_add_labels)
    i = sub.add_parser("inspect", help="print an artifact's sidecar (what made it, how to feed it)")
    i.add_argument("artifact")
    i.set_defaults(fn=_inspect)
    k = sub.add_parser("pack", help="Huffman-code an .onnx/.tflite model into a smaller package to ship")
    k.add_argument("model", help="the model file, e.g. models/export/fp32.onnx")
    k.add_argument("--out", help="the package (default MODEL.ecpk)")
    k.set_defaults(fn=_pack)
    u = sub.add_parser("unpack", help="restore a package's model file bit for bit (sha256 checked)")
    u.add_argument("package")
    u.add_argument("--out", help="the model file (default: the package's name without .ecpk)")
    u.set_defaults(fn=_unpack)
    d = sub.add_parser("deploy", help="install the target's built model on its devices (deploy: in the profile)")
    d.add_argument("--target", required=True, help="target name or profile YAML, e.g. raspberry-pi")
    d.add_argument("--artifacts", help="the build's output (default models/targets/<name>)")
    d.add_argument("--images", default="models/candidates/valset.npz",
                   help="validation images the smoke test draws from (default models/candidates/valset.npz)")
    d.add_argument("--ledger", help="deployment ledger (default deploy/<name>.json)")
    d.add_argument("--dry-run", action="store_true", help="check everything here, ask the devices what they run, "
                                                          "and say what would happen; copy and switch nothing")
    d.set_defaults(fn=_deploy)
    r = sub.add_parser("rollback", help="switch the devices' current release back to the previous one")
    r.add_argument("--target", required=True, help="target name or profile YAML")
    r.add_argument("--device", help="only this device (its url, or url + dir as the ledger names it)")
    r.add_argument("--ledger", help="deployment ledger (default deploy/<name>.json)")
    r.set_defaults(fn=_rollback)
    st = sub.add_parser("status", help="ask each device which release is current; report drift from the ledger")
    st.add_argument("--target", required=True, help="target name or profile YAML")
    st.add_argument("--ledger", help="deployment ledger (default deploy/<name>.json)")
    st.set_defaults(fn=_status)
    from edgecompress.deploy.emulate import MIRROR

    dev = sub.add_parser("device", help="emulated devices: prepare an aarch64 or armv7 root run through qemu")
    dsub = dev.add_subparsers(dest="device_cmd", required=True)
    dp = dsub.add_parser("prepare", help="build the emulated device once (a no-op when it is ready; rebuilds a "
                                         "half-built one); needs root and qemu-user-static")
    dp.add_argument("--arch", required=True, help="instruction set to emulate: aarch64, or armv7 (32-bit ARM, "
                                                   "LiteRT only: tflite-runtime)")
    dp.add_argument("--runtime", action="append", metavar="NAME==VERSION",
                    help="another version of a pinned runtime (aarch64: onnxruntime, ai-edge-litert; armv7: "
                         "tflite-runtime); repeatable")
    dp.add_argument("--mirror", default=MIRROR, help=f"Debian mirror (default {MIRROR})")
    dp.add_argument("--cache", help="where devices live (default $XDG_CACHE_HOME or ~/.cache, /edgecompress/devices)")
    dp.set_defaults(fn=_device_prepare)
    ns = p.parse_args(argv)
    set_verbosity(ns.verbosity)
    ns.fn(ns)


if __name__ == "__main__":
    sys.exit(main())
