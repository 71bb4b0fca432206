"""The build compares a candidate with its profile's agreement device only where the outcome can change the
choice (``search.settle``): the chosen one always, the others only when their failing would ship something
else. Checked against the choice made with every candidate compared, on hand-made and random pools."""

from __future__ import annotations

import random
from dataclasses import replace

from edgecompress.deploy.choose import Candidate, NoFeasibleCandidate, choose
from edgecompress.deploy.search import settle
from edgecompress.deploy.stats import Interval
from edgecompress.deploy.targets import Budgets, BuildSpec

BUDGETS = Budgets(latency_ms={"p50": 10.0}, min_agreement=0.99)
PASS, FAIL = 1.0, 0.5  # top-1 agreement on 1,000 images: well above and well below the 0.99 floor


def cand(name: str, model: str, accuracy: float, size: int, p50: float, n: int = 6000) -> Candidate:
    return Candidate(name=name, model=model, precision="int8", engine="litert", size_bytes=size, accuracy=accuracy,
                     ece=0.01, nll=0.2, latency_ms={"p50": p50}, accuracy_n=n,
                     latency_ci={"p50": Interval(p50, 0.97 * p50, 1.03 * p50, 200)})


def chosen(table: dict[str, Candidate]) -> str | None:
    try:
        return choose(table.values(), BUDGETS, BuildSpec(), None, "t", True).chosen.name
    except NoFeasibleCandidate:
        return None


def run(pool: list[Candidate], truth: dict[str, float]) -> tuple[str | None, list[str]]:
    """What ships after ``settle`` (the uncompared ones counted as they are: not compared), and what it compared."""
    found = {c.name: c for c in pool}
    pending, asked = set(found), []

    def compare(name: str) -> None:
        asked.append(name)
        found[name] = replace(found[name], agreement=truth[name], agreement_n=1000)
        pending.discard(name)

    settle(found, pending, chosen, compare)
    return chosen(found), asked


def every_one_compared(pool: list[Candidate], truth: dict[str, float]) -> str | None:
    return chosen({c.name: replace(c, agreement=truth[c.name], agreement_n=1000) for c in pool})


def test_tied_variants_only_the_one_that_ships_is_compared() -> None:
    # The Pi's case: the teacher's int8, fp16 and fp32 files score alike; the int8 one is smaller and clearly
    # faster, so it ships whatever the float ones' comparisons (20-500 ms an image under qemu) would say.
    pool = [cand("t/fp32", "t", 0.9447, 2_700_000, 0.29), cand("t/int8", "t", 0.9447, 700_000, 0.08),
            cand("t/fp16", "t", 0.9447, 1_300_000, 0.29), cand("s/int8", "s", 0.9388, 150_000, 0.05)]
    truth = {c.name: PASS for c in pool}
    assert run(pool, truth) == ("t/int8", ["t/int8"])
    # It fails on the device: the next one by the tie rule is compared, and ships.
    assert run(pool, {**truth, "t/int8": FAIL}) == ("t/fp16", ["t/int8", "t/fp16"])


def test_an_uncompared_candidate_whose_failure_would_change_the_choice_is_compared() -> None:
    # On 2,000 images (+-0.95 pt) b is tied with a and smaller, so b ships; c is tied with b but not with a.
    # Were a to fail, b would lead and c (smaller still) would ship: a's outcome matters though a never ships.
    pool = [cand("a", "m", 0.950, 900_000, 1.0, n=2000), cand("b", "m", 0.944, 100_000, 1.0, n=2000),
            cand("c", "m", 0.938, 50_000, 1.0, n=2000)]
    truth = {c.name: PASS for c in pool}
    assert run(pool, truth) == ("b", ["b", "a"])
    assert run(pool, {**truth, "a": FAIL}) == ("c", ["b", "a", "c"])


def test_settle_ships_what_comparing_every_candidate_would() -> None:
    saved = extra = 0
    for seed in range(400):
        rng = random.Random(seed)
        pool = []
        for i in range(rng.randint(1, 7)):
            model = rng.choice("mn")
            pool.append(cand(f"{model}{i}", model, round(rng.uniform(0.93, 0.95), 4), rng.randint(1, 9) * 100_000,
                             rng.choice([0.1, 0.3, 1.0, 20.0]), n=rng.choice([1000, 6000])))
        truth = {c.name: rng.choice([PASS, PASS, FAIL]) for c in pool}
        shipped, asked = run(pool, truth)
        assert shipped == every_one_compared(pool, truth), seed
        assert shipped is None or shipped in asked, seed  # what ships was compared on the device
        assert len(asked) == len(set(asked)) <= len(pool), seed
        saved += len(pool) - len(asked)
        extra += any(n != shipped and truth[n] == PASS for n in asked)
    assert saved > 0 and extra > 0  # the pools exercise both: comparisons skipped, and ones needed beyond the choice
