"""Frechet distance between two feature sets, each summarised by its mean and covariance.

    d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2})

the squared 2-Wasserstein distance between Gaussians N(mu_1, C_1) and N(mu_2, C_2), as in FID
(which applies it to Inception features; the harness applies it to the attribute evaluator's
features). Two ways to get the trace of the matrix square root:

* ``"scipy"``: ``scipy.linalg.sqrtm(C_1 @ C_2)`` (the usual FID code), with a small diagonal offset
  when the product is singular, when scipy is installed;
* ``"eigh"``: numpy only. C_1 C_2 is similar to S C_2 S with S = C_1^{1/2} (symmetric, from an
  eigen-decomposition), so tr (C_1 C_2)^{1/2} = sum sqrt(eigvalsh(S C_2 S)), with tiny negative
  eigenvalues from round-off clipped to zero.

``"auto"`` (the default) takes scipy when importable, else eigh. Both agree to round-off on
well-conditioned covariances (tests/test_quality_harness.py checks both against closed forms).
"""

from __future__ import annotations

import warnings

import numpy as np

METHODS = ("auto", "scipy", "eigh")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of ``features`` (N, D), N >= 2, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _have_scipy() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        return False
    return True


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via ``eigh`` (negatives clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _trace_sqrt_product_eigh(cov1: np.ndarray, cov2: np.ndarray) -> float:
    root = _sym_sqrt(cov1)
    inner = root @ cov2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def _trace_sqrt_product_scipy(cov1: np.ndarray, cov2: np.ndarray, eps: float = 1e-6) -> float:
    from scipy import linalg

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = linalg.sqrtm(cov1 @ cov2)
    if caught or not np.isfinite(root).all():
        # singular product (fewer samples than feature dimensions): offset the diagonals, as FID code does
        offset = np.eye(cov1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(root):
        root = root.real  # imaginary parts are round-off for PSD inputs
    return float(np.trace(root))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                     method: str = "auto") -> float:
    """Frechet distance (squared, FID convention) between N(mu1, cov1) and N(mu2, cov2)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched shapes: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}")
    if method == "auto":
        method = "scipy" if _have_scipy() else "eigh"
    trace_root = (_trace_sqrt_product_scipy if method == "scipy" else _trace_sqrt_product_eigh)(cov1, cov2)
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)
    return max(distance, 0.0)  # tiny negatives are round-off


def frechet_distance_features(features1: np.ndarray, features2: np.ndarray, method: str = "auto") -> float:
    """Frechet distance between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), method=method)


__all__ = ["METHODS", "feature_statistics", "frechet_distance", "frechet_distance_features"]
