"""Tolerances derived from the computation, not `assert_close`'s defaults.

Two float computations of the same value that differ only in the order of their additions
(batched vs separate passes, masked vs absent tokens, another BLAS kernel on another CPU) agree to
a few units in the last place per rounding step, scaled by the size of the values involved. The
defaults (rtol 1.3e-6 for float32) sit right at that edge: a test that passes on one CPU fails on
another (an AMD EPYC machine put values near 1400 apart by 0.0023 after 6 sampler steps).
"""
import torch


def assert_close_computed(actual: torch.Tensor, expected: torch.Tensor, *, steps: int,
                          ulps_per_step: int = 8) -> None:
    """Equal up to `ulps_per_step` float-epsilons per sequential rounding stage (`steps`:
    layers x network passes, or sampler steps, that the values went through), relative to the largest magnitude
    in `expected` (at least 1, so values near zero get the absolute floor). A real bug (a wrong
    guidance scale, a leaked padded token) moves values by far more than this."""
    eps = torch.finfo(expected.dtype).eps
    scale = max(float(expected.detach().abs().max()), 1.0)
    atol = steps * ulps_per_step * eps * scale
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol)
