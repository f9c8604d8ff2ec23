"""The embedded data source: a plucked, damped, stiff string, simulated in closed form for many parameter pairs.

The original guide's sequences come from a simulation pipeline: two continuous parameters -> a high-dimensional
profile evolving over 151 steps -> PCA to 5 components. Here the profile is the displacement u(x, t) of a
string fixed at both ends, plucked at x0 = 0.3 and released (the modal solution of the damped wave equation
with a small bending stiffness, e.g. Fletcher & Rossing, *The Physics of Musical Instruments*, ch. 2):

    u(x, t) = sum_n A_n exp(-gamma_n t) cos(omega_n t) sin(n pi x)
    A_n = 2 sin(n pi x0) / (n^2 pi^2 x0 (1 - x0))                 (a triangular pluck of unit height)
    omega_n = OMEGA * c * n * sqrt(1 + B n^2)                       (stiffness B: overtones slightly sharp)
    gamma_n = d * (1 + n / 2)                                       (higher modes lose energy faster)

Parameter 1 is the wave speed c (tension), parameter 2 the damping d. Both change the sequences strongly:
c sets every mode's frequency, so two nearby c's drift out of phase over 151 steps.
"""

from __future__ import annotations

import numpy as np

STEPS = 151
MODES = 10
PLUCK = 0.3
OMEGA = 0.08          # rad per step of mode 1 at c = 1: a period of ~79 steps
STIFFNESS = 0.01
PARAM_RANGES = {"wave_speed": (0.5, 1.5), "damping": (0.002, 0.02)}


def draw_parameters(num: int, seed: int) -> np.ndarray:
    """[num, 2] parameter pairs, uniform over PARAM_RANGES."""
    rng = np.random.default_rng(seed)
    low, high = np.array(list(PARAM_RANGES.values())).T
    return (low + (high - low) * rng.random((num, 2))).astype(np.float64)


def string_profiles(params: np.ndarray, points: int, steps: int = STEPS) -> np.ndarray:
    """Displacement profiles u [N, steps, points] (float32) of the string for each (wave speed, damping) pair."""
    n = np.arange(1, MODES + 1)                                               # [M]
    amplitude = 2 * np.sin(n * np.pi * PLUCK) / (n ** 2 * np.pi ** 2 * PLUCK * (1 - PLUCK))
    x = np.linspace(0, 1, points + 2)[1:-1]                                   # interior points
    shapes = np.sin(np.pi * n[:, None] * x[None, :])                          # [M, points]
    t = np.arange(steps)[None, :, None]                                       # [1, T, 1]
    speed, damping = params[:, 0, None, None], params[:, 1, None, None]       # [N, 1, 1]
    omega = OMEGA * speed * n * np.sqrt(1 + STIFFNESS * n ** 2)               # [N, 1, M]
    gamma = damping * (1 + n / 2)
    modal = (amplitude * np.exp(-gamma * t) * np.cos(omega * t)).astype(np.float32)  # [N, T, M]
    return modal @ shapes.astype(np.float32)                                         # [N, T, points]


def fit_pca(profiles: np.ndarray, components: int) -> dict[str, np.ndarray]:
    """PCA of the profile snapshots [N, T, P] (every time step of every sequence is one sample)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=components, svd_solver="full").fit(profiles.reshape(-1, profiles.shape[-1]))
    return {"mean": pca.mean_, "components": pca.components_, "explained_variance_ratio": pca.explained_variance_ratio_}


def project(profiles: np.ndarray, pca: dict[str, np.ndarray]) -> np.ndarray:
    """[N, T, P] profiles -> [N, T, K] principal-component scores."""
    return (profiles - pca["mean"]) @ pca["components"].T
