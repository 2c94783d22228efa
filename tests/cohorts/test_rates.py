"""Proportions with confidence intervals from two noisy counts: over many draws of the
sample and of OpenDP's noise, the interval holds the true proportion as often as it says."""

from __future__ import annotations

import numpy as np
import opendp.prelude as dp
import pytest

from sandbox.cohorts import rates

dp.enable_features("contrib")


@pytest.mark.parametrize(("patients", "share", "scale"), [
    (1000, 0.3, 2.0),     # sampling dominates
    (200, 0.15, 10.0),    # noise dominates
    (5000, 0.02, 1.0),    # a rare outcome
])
def test_the_interval_covers_the_truth_as_often_as_stated(patients, share, scale):
    rng = np.random.default_rng(patients)
    noise = dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale)
    covered = widths = 0
    runs = 2000
    for _ in range(runs):
        yes = int(rng.binomial(patients, share))
        result = rates.proportion(noise(yes), noise(patients - yes), scale, 0.95)
        covered += result["low"] <= share <= result["high"]
        widths += result["high"] - result["low"]
    assert 0.93 <= covered / runs <= 0.975
    # the noise's part is in the interval: without it, the noisiest case covers far less
    if scale >= 10:
        sampling_only = 2 * 1.96 * np.sqrt(share * (1 - share) / patients)
        assert widths / runs > 1.2 * sampling_only


def test_withheld_or_tiny_counts_give_no_interval():
    assert rates.proportion(None, 40, 1.0)["proportion"] is None
    assert rates.proportion(3, 4, 1.0)["low"] is None
    assert rates.proportion(-2, 50, 1.0)["proportion"] == 0.0
    assert rates.noise_variance(1.0) == pytest.approx(1.8415, rel=1e-3)
