"""Belt-driven axis dynamics: a mass-spring-damper per axis, integrated exactly at a fixed sample rate.

The carriage (mass m) hangs on the belt (stiffness k, damping c) that the motor pulls to the command
position u; Coulomb friction of the carriage's bearings opposes the commanded direction of motion:

    m x'' = k (u - x) + c (u' - x') - F_c tanh(u' / v_s)

With w = sqrt(k/m) (the axis resonance) and z = c / (2 m w) (its damping ratio), in state-space form
(controllable canonical, so no derivative of u is needed):

    s' = A s + B u,   x = C s          A = [[0, 1], [-w^2, -2 z w]],  B = [0, 1]^T,  C = [w^2, 2 z w]

and the friction acceleration f = (F_c / m) tanh(u'/v_s) adds -f through 1 / (s^2 + 2 z w s + w^2).
Between samples the inputs are taken as linear (first-order hold, exact for a piecewise-linear command),
and the discrete system is the exact solution of the continuous one over each step:

    s[k+1] = Phi s[k] + G0 u[k] + G1 u[k+1],  from the matrix exponential of [[A, B, 0], [0, 0, I/T], [0, 0, 0]] T

It runs as a recursive filter over whole trajectories at once (scipy.signal.lfilter), from rest at the
first command. tests/recipes/printer/test_dynamics.py checks it against scipy.signal.lsim.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm
from scipy.signal import lfilter, lfilter_zi, ss2tf


def continuous_system(frequency: float, damping: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, C) of the belt axis from command position to carriage position."""
    w = 2 * np.pi * frequency
    A = np.array([[0.0, 1.0], [-w * w, -2 * damping * w]])
    return A, np.array([[0.0], [1.0]]), np.array([[w * w, 2 * damping * w]])


def discretise_foh(A: np.ndarray, B: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact discretisation with a first-order hold: (Phi, G0, G1) of s[k+1] = Phi s[k] + G0 u[k] + G1 u[k+1]."""
    n, m = B.shape
    block = np.zeros((n + 2 * m, n + 2 * m))
    block[:n, :n], block[:n, n:n + m], block[n:n + m, n + m:] = A * dt, B * dt, np.eye(m)
    E = expm(block)
    phi, gamma1, gamma2 = E[:n, :n], E[:n, n:n + m], E[:n, n + m:]
    return phi, gamma1 - gamma2, gamma2


def transfer_function(A: np.ndarray, B: np.ndarray, C: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) of the FOH-discretised system, for lfilter. With xi = s - G1 u the hold becomes a standard
    discrete system (Phi, G0 + Phi G1, C, C G1)."""
    phi, g0, g1 = discretise_foh(A, B, dt)
    b, a = ss2tf(phi, g0 + phi @ g1, C, C @ g1)
    return b[0], a


class Axis:
    """One belt axis at a fixed sample rate: command [..., N] -> carriage position [..., N]."""

    def __init__(self, frequency: float, damping: float, friction: float, friction_velocity: float, rate: float):
        A, B, C = continuous_system(frequency, damping)
        dt = 1.0 / rate
        self.command_filter = transfer_function(A, B, C, dt)
        # friction acceleration enters where the belt force does: x = C s with C = [1, 0] for a force input
        self.friction_filter = transfer_function(A, B, np.array([[1.0, 0.0]]), dt)
        self.friction, self.friction_velocity, self.rate = friction, friction_velocity, rate

    def __call__(self, command: np.ndarray, command_velocity: np.ndarray) -> np.ndarray:
        b, a = self.command_filter
        zi = lfilter_zi(b, a) * command[..., :1]  # at rest at the first command (unit DC gain)
        position, _ = lfilter(b, a, command, axis=-1, zi=zi)
        if self.friction:
            force = self.friction * np.tanh(command_velocity / self.friction_velocity)
            b, a = self.friction_filter
            position = position - lfilter(b, a, force, axis=-1)
        return position
