"""Belt-axis dynamics against scipy.signal's continuous-time simulation and analytic answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal

from kiln.recipes.printer.dynamics import Axis, continuous_system, discretise_foh


def piecewise_linear_command(rate: float, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random walk of positions at the sample rate (what a planner's command looks like between samples)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return t, np.cumsum(rng.normal(0, 0.05, len(t))) + 100.0


@pytest.mark.parametrize("frequency, damping", [(30.0, 0.05), (45.0, 0.1), (80.0, 0.15)])
def test_axis_equals_scipy_lsim_of_the_mass_spring_damper(frequency, damping):
    """lsim integrates the continuous system with its input linear between samples: the same first-order hold,
    so the exact discretisation must agree to rounding."""
    rate = 1000.0
    t, command = piecewise_linear_command(rate, 1.0, seed=int(frequency))
    w = 2 * math.pi * frequency
    # the transfer function of m x'' = k (u - x) + c (u' - x'):  X/U = (2 z w s + w^2) / (s^2 + 2 z w s + w^2)
    system = signal.lti([2 * damping * w, w * w], [1, 2 * damping * w, w * w])
    _, expected, _ = signal.lsim(system, command - command[0], t)   # lsim starts at rest at zero
    axis = Axis(frequency, damping, friction=0.0, friction_velocity=1.0, rate=rate)
    got = axis(command, np.zeros_like(command))
    np.testing.assert_allclose(got - command[0], expected, atol=1e-9 * np.abs(expected).max() + 1e-12)


def test_friction_enters_as_a_force_on_the_carriage():
    rate, frequency, damping, friction, v_s = 1000.0, 40.0, 0.1, 1500.0, 2.0
    t = np.arange(800) / rate
    velocity = 50 * np.sin(2 * np.pi * 2 * t)                       # back and forth: friction flips sign
    command = np.cumsum(velocity) / rate
    w = 2 * math.pi * frequency
    # two inputs, u (command) and f (friction acceleration); x'' = w^2 (u - x) + 2 z w (u' - x') - f
    A, B, C = continuous_system(frequency, damping)
    force = friction * np.tanh(velocity / v_s)
    position = signal.lsim(signal.lti([2 * damping * w, w * w], [1, 2 * damping * w, w * w]), command, t)[1]
    position -= signal.lsim(signal.lti([1.0], [1, 2 * damping * w, w * w]), force, t)[1]
    got = Axis(frequency, damping, friction, v_s, rate)(command, velocity)
    np.testing.assert_allclose(got, position, atol=1e-9)
    # at constant speed the carriage lags by friction / w^2 (the belt stretches until it carries the friction)
    steady = Axis(frequency, damping, friction, v_s, rate)(np.arange(2000) * 0.05, np.full(2000, 50.0))
    assert math.isclose(steady[-1] - 1999 * 0.05, -friction * math.tanh(25.0) / w ** 2, rel_tol=1e-6)


def test_discretisation_is_the_matrix_exponential_and_rings_at_the_damped_frequency():
    A, B, _ = continuous_system(40.0, 0.1)
    phi, g0, g1 = discretise_foh(A, B, 1e-3)
    from scipy.linalg import expm

    np.testing.assert_allclose(phi, expm(A * 1e-3), rtol=1e-12)
    np.testing.assert_allclose(g0 + g1, np.linalg.solve(A, (phi - np.eye(2)) @ B), rtol=1e-9)   # a constant input: ZOH
    # a step of the command: the carriage overshoots and rings at w sqrt(1 - z^2), decaying at z w
    rate = 10_000.0
    step = np.concatenate([np.zeros(10), np.ones(int(rate) - 10)])
    x = Axis(40.0, 0.1, 0.0, 1.0, rate)(step, np.zeros_like(step))
    crossings = np.flatnonzero(np.diff(np.sign(x[10:] - 1)) != 0)
    period = 2 * np.mean(np.diff(crossings[:8])) / rate
    assert math.isclose(1 / period, 40.0 * math.sqrt(1 - 0.01), rel_tol=2e-3)
    assert abs(x[-1] - 1) < 1e-6
