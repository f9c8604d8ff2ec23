"""Stage 1: G-code -> planned reference -> shaped motor command -> carriage position, per printed layer.

`simulate_moves` plans the whole file (junctions and lookahead need every move), then samples the selected
layers at `sample_rate` from a short settling time before each layer starts, so every layer begins from the
motion state the printer really has there. Each (model, layer) is one trajectory: the unit that the data
splits never cut. Everything runs on whole arrays: 40,000 samples take well under a second. The samples a file
would give are counted from the plan first: more than MAX_SAMPLES_PER_FILE is one line naming the slowest move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import freqz

from kiln.errors import KilnError
from kiln.recipes.printer.config import LAYERS_PATTERN
from kiln.recipes.printer.dynamics import Axis
from kiln.recipes.printer.gcode import Moves, read_gcode, read_gcode_file
from kiln.recipes.printer.procedural_prints import MODELS, procedural_gcode
from kiln.recipes.printer.planner import Plan, plan_moves, sample_plan, shaper_pulses

SETTLE_S = 0.3  # simulated first and dropped: the start-at-rest transient decays (~7 decay times of a 40 Hz, zeta 0.1 axis)
WARMUP_S = 0.2  # then kept before the layer, unscored: history for a model that starts from rest with the trajectory
# ~3 hours of printing at 1 kHz (pyGCodeDecode's benchy, every layer, is 5.8 million); kept as 88 bytes a sample, and
# simulating one layer needs about 420 bytes a sample while it runs
MAX_SAMPLES_PER_FILE = 10_000_000
# weight of |offset|^2 in Printer.correction: the inverse's gain stays under 1 / (2 sqrt(0.01)) = 5 where the shaper
# notches the response, so an error there is not chased with ever larger offsets (docs/printer.md)
CORRECTION_REGULARISATION = 0.01
CHANNELS = ("x_ref", "y_ref", "vx_ref", "vy_ref", "ax_ref", "ay_ref", "x_cmd", "y_cmd", "x_act", "y_act")


def position_error(signals: dict[str, np.ndarray]) -> np.ndarray:
    """[N, 2] actual - reference position (mm) of simulated CHANNELS."""
    return np.stack([signals["x_act"] - signals["x_ref"], signals["y_act"] - signals["y_ref"]], 1)


@dataclass
class Trajectory:
    """One simulated layer: reference, command and actual position per sample ([N] arrays, mm and mm/s)."""

    model: str
    layer: int
    time: np.ndarray
    signals: dict[str, np.ndarray]   # CHANNELS
    warmup: int                      # samples before the layer's first move (history only: never scored)

    @property
    def error(self) -> np.ndarray:
        """[N, 2] actual - reference (mm)."""
        return position_error(self.signals)


def select_layers(spec: str, count: int) -> np.ndarray:
    """'all', 'sampled:N' (every N-th layer, the guide's form), 'first:N' or 'A-B' (inclusive, 0-based)."""
    if not re.fullmatch(LAYERS_PATTERN, spec):
        raise KilnError(f"layers '{spec}' is not one of all, sampled:N (N >= 1), first:N or A-B")
    if spec == "all":
        return np.arange(count)
    form, _, value = spec.partition(":")
    if form == "sampled":
        return np.arange(0, count, min(int(value), max(count, 1)))  # every N-th from 0: N beyond count keeps layer 0
    if form == "first":
        return np.arange(min(int(value), count))
    first, last = (min(int(v), count) for v in spec.split("-"))
    return np.arange(first, min(last + 1, count))


class Printer:
    """The machine: planner settings, input shaper and the two belt axes (a PrinterGenerator's fields)."""

    def __init__(self, s):
        self.s = s
        self.rate = s.sample_rate
        self.axes = [Axis(s.resonance_x_hz, s.damping_x, s.friction, s.friction_velocity, s.sample_rate),
                     Axis(s.resonance_y_hz, s.damping_y, s.friction, s.friction_velocity, s.sample_rate)]
        # per axis: (amplitudes, time shifts) of the shaper's pulses; one unshifted pulse without shaping
        self.shapers = [shaper_pulses(s.shaper, frequency, s.shaper_damping) if s.shaper != "none" else (np.ones(1), np.zeros(1))
                        for frequency in (s.shaper_x_hz or s.resonance_x_hz, s.shaper_y_hz or s.resonance_y_hz)]

    def plan(self, moves: Moves) -> Plan:
        s = self.s
        return plan_moves(moves, s.acceleration, s.max_velocity, s.firmware, s.junction_deviation, s.square_corner_velocity)

    def command(self, plan: Plan, times: np.ndarray, offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Shaped motor command and its velocity [2, N] at `times`. `offset(times)` [N, 2], when given, is added to
        the reference before shaping (compensation pre-distorts the path the firmware is asked to follow); its
        velocity is part of the command's, so it moves the carriage's friction as well as its position."""
        position, velocity = np.zeros((2, len(times))), np.zeros((2, len(times)))
        offset_velocity = None if offset is None else np.gradient(offset, times, axis=0)
        for axis, (amplitudes, shifts) in enumerate(self.shapers):
            for amplitude, shift in zip(amplitudes, shifts):
                sample = sample_plan(plan, times - shift)
                position[axis] += amplitude * sample["position"][:, axis]
                velocity[axis] += amplitude * sample["velocity"][:, axis]
                if offset is not None:
                    position[axis] += amplitude * np.interp(times - shift, times, offset[:, axis])
                    velocity[axis] += amplitude * np.interp(times - shift, times, offset_velocity[:, axis])
        return position, velocity

    def response(self, axis: int, n: int) -> np.ndarray:
        """Frequency response [n // 2 + 1] of an offset added to the reference, to the carriage position of `axis`
        (the shaper's pulses, then the belt axis without friction), at np.fft.rfftfreq(n, 1 / rate)."""
        w = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / self.rate)
        amplitudes, shifts = self.shapers[axis]
        shaper = (amplitudes[:, None] * np.exp(-1j * w[None] * shifts[:, None])).sum(0)
        _, belt = freqz(*self.axes[axis].command_filter, worN=w / self.rate)
        return shaper * belt

    def correction(self, error: np.ndarray, regularisation: float = CORRECTION_REGULARISATION) -> np.ndarray:
        """The offset [N, 2] that best cancels an error [N, 2] of one layer once it has gone through the shaper and
        the belt axes: per axis argmin |error + L offset|^2 + regularisation |offset|^2 (Tikhonov), solved in the
        frequency domain on a zero-padded copy. Subtracting the error itself assumes L = 1, but the offset is shaped
        and rings the axis as the path does. Friction is left out of L (it is not linear): the offset's velocity
        moves it, which is what limits any correction made this way (docs/printer.md, "What sets the floor")."""
        n = 2 * len(error)
        offset = np.empty_like(error)
        for axis in range(error.shape[1]):
            L = self.response(axis, n)
            spectrum = np.fft.rfft(error[:, axis], n)
            offset[:, axis] = np.fft.irfft(-spectrum * np.conj(L) / (np.abs(L) ** 2 + regularisation), n)[:len(error)]
        return offset

    def simulate(self, plan: Plan, times: np.ndarray, offset: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """All CHANNELS at `times` (equally spaced at the sample rate), the axes starting at rest at the first command."""
        ref = sample_plan(plan, times)
        command, command_velocity = self.command(plan, times, offset)
        actual = [axis(command[k], command_velocity[k]) for k, axis in enumerate(self.axes)]
        return {"x_ref": ref["position"][:, 0], "y_ref": ref["position"][:, 1],
                "vx_ref": ref["velocity"][:, 0], "vy_ref": ref["velocity"][:, 1],
                "ax_ref": ref["acceleration"][:, 0], "ay_ref": ref["acceleration"][:, 1],
                "x_cmd": command[0], "y_cmd": command[1], "x_act": actual[0], "y_act": actual[1]}

    def layer_span(self, plan: Plan, layer: int) -> tuple[float, float] | None:
        """First and last sample index of one layer: SETTLE_S + WARMUP_S before its first move to its last move's end."""
        moves = np.flatnonzero(plan.layer == layer)
        if len(moves) == 0:
            return None
        begin, end = plan.t_start[moves[0]], plan.t_start[moves[-1]] + plan.move_time[moves[-1]]
        return float(np.floor((begin - SETTLE_S - WARMUP_S) * self.rate)), float(np.ceil(end * self.rate))


def layer_times(printer: Printer, plan: Plan, spec: str, count: int, source: str) -> list[tuple[int, np.ndarray]]:
    """(layer, sample times) of each layer `spec` selects out of `count`; refused in one line, before any time is made,
    when together they are more than MAX_SAMPLES_PER_FILE samples."""
    spans = {int(k): printer.layer_span(plan, int(k)) for k in select_layers(spec, count)}
    spans = {k: span for k, span in spans.items() if span is not None}
    total = sum(last - first + 1 for first, last in spans.values())
    if not total <= MAX_SAMPLES_PER_FILE:  # also inf and nan, from settings under which a move never ends
        chosen = np.isin(plan.layer, list(spans))
        slowest = int(np.argmax(np.where(chosen, np.nan_to_num(plan.move_time, nan=np.inf), -1.0)))
        raise KilnError(f"{source}: layers '{spec}' would be {total:,.0f} samples at {printer.rate:g} Hz "
                        f"({total / printer.rate / 3600:.1f} hours of printing), more than the {MAX_SAMPLES_PER_FILE:,} one "
                        f"file may give; its slowest move is line {plan.line[slowest]} ({plan.move_time[slowest]:,.0f} s): "
                        "choose fewer layers (--layers sampled:N), a lower --sample-rate, or fix the line")
    return [(k, np.arange(first, last + 1) / printer.rate) for k, (first, last) in spans.items()]


def simulate_moves(printer: Printer, moves: Moves, model: str, layers: str) -> list[Trajectory]:
    plan = printer.plan(moves)
    out = []
    settle, warmup = int(round(SETTLE_S * printer.rate)), int(round(WARMUP_S * printer.rate))
    for layer, times in layer_times(printer, plan, layers, len(moves.layer_z), moves.source):
        if len(times) <= settle + warmup + 1:
            continue
        signals = printer.simulate(plan, times)
        out.append(Trajectory(model, layer, times[settle:], {k: v[settle:] for k, v in signals.items()}, warmup))
    return out


def model_sources(spec: str, model_layers: int) -> list[tuple[str, Moves]]:
    """(name, moves) per entry of a comma-separated list of procedural model names, G-code files and folders."""
    sources = []
    for entry in [e.strip() for e in spec.split(",") if e.strip()]:
        if entry in MODELS:
            sources.append((entry, read_gcode(procedural_gcode(entry, model_layers), f"procedural model {entry}")))
            continue
        path = Path(entry)
        files = sorted(path.glob("*.gcode")) + sorted(path.glob("*.gco")) if path.is_dir() else [path]
        if not path.exists():
            raise KilnError(f"model '{entry}' is neither a procedural model ({', '.join(MODELS)}) nor an existing "
                            "G-code file or folder")
        if not files:
            raise KilnError(f"folder '{path}' has no .gcode files")
        sources += [(f.stem, read_gcode_file(f)) for f in files]
    if not sources:
        raise KilnError("no models given; name procedural models or G-code files, e.g. --models 3dbenchy,boat")
    return sources
