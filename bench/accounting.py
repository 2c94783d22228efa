"""Benchmark: what Laplace (pure ε) and Gaussian noise (zCDP converted to (ε, δ)) cost.

1. **k statistics that every patient feeds**, each with the same noise standard deviation:
   the ε that k Laplace releases add up to beside the ε OpenDP's conversion gives k
   Gaussian releases composed in zCDP (ρ adds up), at δ = ``--delta``. The baseline is the
   Laplace sum; the ratio printed is Gaussian / Laplace (below 1: zCDP is cheaper).
2. **Each kind the gateway releases, one release at ε = 1**: the noise scale OpenDP calibrates
   for Laplace and for Gaussian at δ (``sandbox.gateway.engine.Engine.measurement`` on a
   patient-level frame of 100,000 patients), and the ratio of their standard deviations
   (below 1: Gaussian adds less noise for the same charge). For quantiles, the noise on the
   median's candidate scores: exponential under pure ε, Gumbel under zCDP.

3. **A study of k releases of a grant accounting in zCDP** (``sandbox.gateway.zcdp.price``,
   as the ledger charges them): k Gaussian releases asked at ε each, what the grant spends,
   beside the k ε that Laplace releases at the same ε spend (and the noise of each: a
   Gaussian release at ε adds more noise than a Laplace one, so the fair comparison is
   part 1's; this part is the ledger's own arithmetic).

Every figure comes from OpenDP's own ``map``; nothing is read or released.

    .venv/bin/python bench/accounting.py [--delta 1e-7]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import opendp.prelude as dp
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import units  # noqa: E402
from sandbox.gateway.cohorts import CohortFrame  # noqa: E402
from sandbox.gateway.engine import Engine  # noqa: E402
from sandbox.gateway.zcdp import Pool, approximate, price, rho_of_pure  # noqa: E402
from sandbox.queries.spec import QuerySpec  # noqa: E402
from sandbox.queries.view import domain  # noqa: E402

dp.enable_features("contrib")

STATISTICS = (1, 2, 4, 9, 12, 24, 50, 100)
PURPOSE = "medical_research"


def composed(k: int, sd: float, delta: float) -> tuple[float, float]:
    """ε of k Laplace and of k Gaussian statistics of standard deviation ``sd`` each, at
    sensitivity 1, composed (pure ε adds up; ρ adds up and is converted at ``delta``)."""
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    laplace = dp.m.make_laplace(*space, sd / math.sqrt(2)).map(1.0)
    rho = dp.m.make_gaussian(*space, sd).map(1.0)
    return k * laplace, approximate(k * rho, delta)[0]


def frame(patients: int) -> CohortFrame:
    fields = {"age": {"type": "integer", "bounds": [0, 110]},
              "sex": {"type": "string", "categories": ["F", "M"]},
              "readmitted": {"type": "string", "categories": ["no", "yes"]},
              "_consent_medical_research": {"type": "boolean"}}
    schema = pl.Schema({"age": pl.Int64, "sex": pl.Enum(["F", "M"]),
                        "readmitted": pl.Enum(["no", "yes"]),
                        "_consent_medical_research": pl.Boolean})
    return CohortFrame("bench#cohort", "1", fields, schema, domain(schema, patients))


KINDS = {
    "patient count": {"kind": "count"},
    "count by sex × readmitted (4 cells)": {"kind": "count",
                                            "group_by": ["sex", "readmitted"]},
    "mean age (sum and count)": {"kind": "mean", "field": "age", "bounds": [0, 110]},
    "3 quantiles of age": {"kind": "quantiles", "field": "age", "bounds": [0, 110],
                           "quantiles": [0.25, 0.5, 0.75]},
    "9 quantiles of age": {"kind": "quantiles", "field": "age", "bounds": [0, 110],
                           "quantiles": [i / 10 for i in range(1, 10)]},
}


def sd(statistic: dict) -> float:
    """The standard deviation of the noise OpenDP reports for one statistic: Laplace √2 s,
    Gaussian s; for a quantile, of the noise on its candidates' scores (exponential s,
    Gumbel π s / √6)."""
    scale, distribution = statistic["scale"], statistic["distribution"]
    factor = {"Gaussian": 1.0, "Laplace": math.sqrt(2), "ExponentialMin": 1.0,
              "GumbelMin": math.pi / math.sqrt(6)}
    return scale * next(f for name, f in factor.items() if name in distribution)


def kinds(delta: float) -> list[tuple[str, str, float, float]]:
    engine, described = Engine(), frame(100_000)
    out = []
    for name, shape in KINDS.items():
        scales = {}
        for noise in ("laplace", "gaussian"):
            spec = QuerySpec(dataset="bench", epsilon=1.0, noise=noise,
                             delta=delta if noise == "gaussian" else 0.0, **shape)
            summary = engine.preview(spec, described, PURPOSE)
            scales[noise] = summary
        # one statistic per kind: the first, or the median's score for quantiles (its
        # candidates are scored at the scale shown; the other cut points' are rescaled)
        pick = next((i for i, r in enumerate(scales["laplace"])
                     if r["aggregate"].startswith("0.5-")), 0)
        lap, gau = scales["laplace"][pick], scales["gaussian"][pick]
        statistic = "median's score" if "Quantile" in lap["aggregate"] else \
            lap["aggregate"].lower()
        out.append((name, statistic, sd(lap), sd(gau)))
    return out


def study(k: int, epsilon: float, delta: float) -> float:
    """What a fresh grant spends on k Gaussian releases of (ε, δ) each, as the ledger
    charges them (``zcdp.price``: the first makes the grant account in zCDP at δ)."""
    pool = Pool(0, 0, 0, 0)
    for _ in range(k):
        charge = price("gaussian", units.micro_epsilon(epsilon), units.atto_delta(delta),
                       pool)
        pool = Pool(pool.rho_femto + charge.rho_femto, pool.delta_atto
                    + charge.opens_delta_atto, pool.epsilon_spent_micro + charge.epsilon_micro,
                    pool.delta_spent_atto + charge.delta_atto)
    return units.epsilon_of(pool.epsilon_spent_micro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delta", type=float, default=1e-7)
    args = parser.parse_args()
    print(f"1. k statistics every patient feeds, equal noise; δ = {args.delta:g} for Gaussian")
    print(f"{'k':>4} {'noise sd':>9} {'ε Laplace':>10} {'ε Gaussian':>11} {'ratio':>6}")
    for total in (0.1, 1.0, 5.0):
        for k in STATISTICS:
            sd = math.sqrt(2) * k / total  # the sd at which k Laplace releases cost `total`
            laplace, gaussian = composed(k, sd, args.delta)
            print(f"{k:>4} {sd:>9.1f} {laplace:>10.3f} {gaussian:>11.3f} "
                  f"{gaussian / laplace:>6.2f}")
        print()
    print(f"2. one release at ε = 1 (Gaussian: δ = {args.delta:g}), 100,000 patients")
    print(f"{'kind':<38} {'statistic':<22} {'sd Laplace':>10} {'sd Gaussian':>11} "
          f"{'ratio':>6}")
    for name, aggregate, laplace, gaussian in kinds(args.delta):
        print(f"{name:<38} {aggregate:<22} {laplace:>10.3f} {gaussian:>11.3f} "
              f"{gaussian / laplace:>6.2f}")
    print()
    print(f"3. a study of k Gaussian releases of a grant accounting in zCDP (δ = {args.delta:g})")
    print(f"{'k':>4} {'ε each':>7} {'k ε':>7} {'pool spends':>12} {'ratio':>6}")
    for epsilon in (0.1, 0.5):
        for k in (1, 5, 10, 20, 50):
            spent = study(k, epsilon, args.delta)
            print(f"{k:>4} {epsilon:>7.2f} {k * epsilon:>7.2f} {spent:>12.3f} "
                  f"{spent / (k * epsilon):>6.2f}")
    alone = approximate(rho_of_pure(1.0), args.delta)[0]
    print(f"a Laplace release of ε = 1 alone in a grant accounting in zCDP: ε = {alone:.2f}")


if __name__ == "__main__":
    main()
