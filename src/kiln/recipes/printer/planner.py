"""A firmware-like motion planner: straight moves -> trapezoidal velocity profiles -> samples at a fixed rate.

As Marlin and Klipper plan (every step vectorised over all moves):
1. nominal speed of each move: its F, capped by max_velocity;
2. corner speed at each junction: Marlin's junction deviation v^2 = a * JD * sin(theta/2) / (1 - sin(theta/2))
   (theta: the angle between the two moves' directions, so a straight line is unlimited and a reversal stops),
   or Klipper's square corner velocity, which is the same formula with JD = scv^2 * (sqrt(2) - 1) / a;
3. lookahead: a backward pass (every move can decelerate to its exit speed) and a forward pass (every move can
   reach its exit speed from its entry speed) over the whole file. Both are min-scans:
   w_i = min(J_i, w_{i+1} + 2 a L_i) is a suffix minimum of J_k + D_k minus D_i (D the running sum of 2 a L);
4. a trapezoid per move (accelerate, cruise, decelerate at `acceleration`; a triangle when the move is short).
Moves that only feed filament (retractions) take their time at the reference position.

Input shaping (Klipper's shaper_defs.py: ZV, MZV, EI) turns the planned position into the motor command as a
weighted sum of time-shifted copies, centred so that constant-velocity motion is not delayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiln.recipes.printer.gcode import Moves


@dataclass
class Plan:
    """Per-move trapezoids. Every array is [M] except `direction` [M, 3]."""

    start: np.ndarray        # [M, 3] start position
    direction: np.ndarray    # [M, 3] unit vector of XYZ motion (zero for filament-only moves)
    length: np.ndarray       # path length (XYZ distance, or |E| for filament-only moves)
    v_entry: np.ndarray
    v_peak: np.ndarray
    v_exit: np.ndarray
    acceleration: float
    t_start: np.ndarray      # time the move begins
    t_accel: np.ndarray      # durations of the three phases
    t_cruise: np.ndarray
    t_decel: np.ndarray
    line: np.ndarray         # source line of each move
    layer: np.ndarray        # layer of each move

    @property
    def duration(self) -> float:
        return float(self.t_start[-1] + self.t_accel[-1] + self.t_cruise[-1] + self.t_decel[-1]) if len(self.line) else 0.0

    @property
    def move_time(self) -> np.ndarray:
        return self.t_accel + self.t_cruise + self.t_decel


def junction_speed_sq(direction: np.ndarray, acceleration: float, deviation: float) -> np.ndarray:
    """Squared corner-speed limit between move i and i+1 ([M-1]) by junction deviation."""
    d0, d1 = direction[:-1], direction[1:]
    moving = (np.linalg.norm(d0, axis=1) > 0) & (np.linalg.norm(d1, axis=1) > 0)
    cos_theta = -np.einsum("ij,ij->i", d0, d1)  # Marlin's junction_cos_theta: -1 straight on, +1 reversal
    sin_half = np.sqrt(np.clip(0.5 * (1.0 - cos_theta), 0.0, 1.0))
    with np.errstate(divide="ignore"):
        limit = np.where(sin_half < 1 - 1e-9, acceleration * deviation * sin_half / (1 - sin_half), np.inf)
    return np.where(moving & (cos_theta < 0.999999), limit, 0.0)


def plan_moves(moves: Moves, acceleration: float, max_velocity: float, firmware: str = "marlin",
               junction_deviation: float = 0.013, square_corner_velocity: float = 5.0) -> Plan:
    """Trapezoidal plan of `moves` (see the module docstring)."""
    delta = moves.end - moves.start
    xyz = np.linalg.norm(delta, axis=1)
    filament_only = (xyz == 0) & (moves.extrude != 0)
    keep = (xyz > 0) | filament_only
    delta, xyz, filament_only = delta[keep], xyz[keep], filament_only[keep]
    length = np.where(filament_only, np.abs(moves.extrude[keep]), xyz)
    direction = np.where(filament_only[:, None], 0.0, delta / np.where(xyz > 0, xyz, 1.0)[:, None])
    nominal = np.minimum(moves.feedrate[keep], max_velocity)
    a = float(acceleration)
    deviation = junction_deviation if firmware == "marlin" else square_corner_velocity ** 2 * (math.sqrt(2) - 1) / a
    # entry limit of move i: the corner with move i-1, never above either move's nominal speed; rest at both ends
    corner = np.minimum(junction_speed_sq(direction, a, deviation), np.minimum(nominal[:-1], nominal[1:]) ** 2)
    limit_sq = np.concatenate([[0.0], corner, [0.0]])              # [M+1]: junction k is before move k
    reach = 2 * a * length                                         # v_out^2 <= v_in^2 + 2 a L
    cumulative = np.concatenate([[0.0], np.cumsum(reach)])         # D_k
    backward = np.minimum.accumulate((limit_sq + cumulative)[::-1])[::-1] - cumulative
    forward = np.minimum.accumulate(backward - cumulative) + cumulative
    junction = np.sqrt(np.maximum(forward, 0.0))
    v_entry, v_exit = junction[:-1], junction[1:]
    # the highest speed a move reaches: nominal, or where its acceleration and deceleration ramps meet
    v_peak = np.minimum(nominal, np.sqrt(np.maximum((reach + v_entry ** 2 + v_exit ** 2) / 2, 0.0)))
    v_peak = np.maximum(v_peak, np.maximum(v_entry, v_exit))       # rounding: never below an end speed
    t_accel = (v_peak - v_entry) / a
    t_decel = (v_peak - v_exit) / a
    cruise = length - (v_peak ** 2 - v_entry ** 2) / (2 * a) - (v_peak ** 2 - v_exit ** 2) / (2 * a)
    t_cruise = np.maximum(cruise, 0.0) / np.maximum(v_peak, 1e-12)
    durations = t_accel + t_cruise + t_decel
    t_start = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    return Plan(moves.start[keep], direction, length, v_entry, v_peak, v_exit, a, t_start, t_accel, t_cruise, t_decel,
                moves.line[keep], moves.layer[keep])


def sample_plan(plan: Plan, times: np.ndarray) -> dict[str, np.ndarray]:
    """Reference position, velocity and acceleration [N, 3] at `times` (seconds), evaluated exactly."""
    times = np.clip(times, 0.0, plan.duration)
    k = np.clip(np.searchsorted(plan.t_start, times, side="right") - 1, 0, len(plan.t_start) - 1)
    tau = times - plan.t_start[k]
    ta, tc, td = plan.t_accel[k], plan.t_cruise[k], plan.t_decel[k]
    v0, vp, a = plan.v_entry[k], plan.v_peak[k], plan.acceleration
    tau = np.minimum(tau, ta + tc + td)
    in_accel, in_decel = tau < ta, tau > ta + tc
    t1 = np.minimum(tau, ta)                      # time spent accelerating
    t2 = np.clip(tau - ta, 0.0, tc)               # cruising
    t3 = np.clip(tau - ta - tc, 0.0, td)          # decelerating
    distance = v0 * t1 + 0.5 * a * t1 ** 2 + vp * t2 + vp * t3 - 0.5 * a * t3 ** 2
    speed = np.where(in_accel, v0 + a * t1, np.where(in_decel, vp - a * t3, vp))
    along = np.where(in_accel, a, np.where(in_decel, -a, 0.0))
    direction = plan.direction[k]
    moving = np.linalg.norm(direction, axis=1) > 0
    distance = np.where(moving, np.minimum(distance, plan.length[k]), 0.0)
    return {"position": plan.start[k] + distance[:, None] * direction,
            "velocity": speed[:, None] * direction, "acceleration": along[:, None] * direction, "move": k}


# ---------------------------------------------------------------- input shaping (Klipper's shaper_defs.py)

def shaper_pulses(kind: str, frequency: float, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """(amplitudes summing to 1, times in s centred on their weighted mean) of a ZV, MZV or EI shaper."""
    root = math.sqrt(1 - damping ** 2)
    period = 1.0 / (frequency * root)
    if kind == "zv":
        k = math.exp(-damping * math.pi / root)
        amplitudes, times = [1.0, k], [0.0, 0.5 * period]
    elif kind == "mzv":
        k = math.exp(-0.75 * damping * math.pi / root)
        a1 = 1 - 1 / math.sqrt(2)
        amplitudes, times = [a1, (math.sqrt(2) - 1) * k, a1 * k * k], [0.0, 0.375 * period, 0.75 * period]
    elif kind == "ei":
        tolerance = 0.05  # Klipper's SHAPER_VIBRATION_REDUCTION = 20
        k = math.exp(-damping * math.pi / root)
        a1 = 0.25 * (1 + tolerance)
        amplitudes, times = [a1, 0.5 * (1 - tolerance) * k, a1 * k * k], [0.0, 0.5 * period, period]
    else:
        raise ValueError(f"unknown input shaper '{kind}'")
    amplitudes = np.array(amplitudes) / sum(amplitudes)
    times = np.array(times)
    return amplitudes, times - (amplitudes * times).sum()
