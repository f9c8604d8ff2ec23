"""Stage 5: a streaming predictor that keeps the LSTM state between samples, on ONNX Runtime.

The original guide's StreamingPredictor keeps a deque of the last 20 samples and re-runs the whole window
through the model for every new sample. Here each sample costs one LSTM step: the exported step module takes the
sample's raw features and the state (h, c) and returns the error and the next state. Because the LSTM is
causal, the streamed errors equal the model's per-step outputs on the whole sequence (a test checks this).
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.recipes.printer.data import lag_steps


def export_stream_step(task, path: Path) -> Path:
    """Write the task's one-step module as ONNX (whole or not at all: kiln.engine.files)."""
    import contextlib
    import io
    import logging

    from kiln.engine.files import write_file

    step = task.stream_step().float().cpu()
    lstm = task.model.lstm
    state = torch.zeros(lstm.num_layers, 1, lstm.hidden_size)
    inputs = (torch.zeros(1, len(step.feature_mean)), state, state.clone())
    for noisy in ("torch.onnx._internal.exporter._registration", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(step, inputs, dynamo=True, verbose=False, input_names=list(step.input_names),
                                    output_names=list(step.output_names))
    write_file(path, lambda f: f.write(program.model_proto.SerializeToString()), binary=True)
    return path


def load_lstm_task(run_dir: Path, which: str = "best_model.pt"):
    """The task of a run that trained the LSTM (streaming has no form for the ridge FIR alone)."""
    from kiln.engine.evaluate import load_run_task
    from kiln.recipes import get_recipe
    from kiln.recipes.printer.model import RealTimeCorrector

    run_dir = Path(run_dir)
    if not (run_dir / which).is_file():
        raise KilnError(f"'{run_dir}' has no {which}; train it first (kiln train CONFIG --run-dir {run_dir})")
    task = load_run_task(run_dir, get_recipe("printer"), {}, which=which)
    if not isinstance(task.model, RealTimeCorrector):
        raise KilnError(f"'{run_dir}' trained the ridge baseline alone; streaming needs the LSTM (model.arch: lstm)")
    return task


class StreamingPredictor:
    """predict(x_ref, y_ref, vx_ref, vy_ref) -> (error_x, error_y, inference_ms), one sample at a time, in mm.

    Build it with `StreamingPredictor.from_run(RUN)`. Features the model was trained with beyond the guide's four
    (acceleration, lagged velocities) are computed here from the samples seen, exactly as data preparation does.
    """

    def __init__(self, onnx_path: Path, feature_names: list[str], sample_rate: float, num_layers: int, hidden: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a per-sample call is far too small to share between threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.value = onnxruntime.OrtValue.ortvalue_from_numpy  # an OrtValue over a NumPy array's own memory
        self.output_names = [o.name for o in self.session.get_outputs()]  # error_predictions, h_next, c_next
        self.names, self.rate = feature_names, sample_rate
        self.position, self.acceleration = "x_ref" in feature_names, "ax_ref" in feature_names
        self.lags = [lag_steps(float(n[6:-2]), sample_rate) for n in feature_names if n.startswith("vx_lag")]
        self.shape = (num_layers, 1, hidden)
        self.reset()

    @classmethod
    def from_task(cls, task, onnx_path: Path) -> StreamingPredictor:
        """Export the task's step module to `onnx_path` and stream with it."""
        export_stream_step(task, Path(onnx_path))
        lstm = task.model.lstm
        return cls(onnx_path, task.feature_names, task.sample_rate, lstm.num_layers, lstm.hidden_size)

    @classmethod
    def from_run(cls, run_dir: Path, which: str = "best_model.pt") -> StreamingPredictor:
        """The run's LSTM, exported to RUN/export/stream_step.onnx."""
        return cls.from_task(load_lstm_task(run_dir, which), Path(run_dir) / "export" / "stream_step.onnx")

    def reset(self) -> None:
        """Start a new trajectory: the state and the velocity history at rest."""
        self.history: deque | None = None
        # Arrays made once and bound once (ONNX Runtime I/O binding): a call then neither converts inputs nor
        # allocates outputs. The features and the error are written and read in place; the state (h, c) lives in
        # two pairs of arrays, and two bindings alternate between them: A -> B on one call, B -> A on the next.
        self.features, self.error = np.zeros((1, len(self.names)), np.float32), np.zeros((1, 2), np.float32)
        states = [[self.value(np.zeros(self.shape, np.float32)) for _ in "hc"] for _ in "AB"]
        features, error = self.value(self.features), self.value(self.error)
        self.bindings = []
        for state_in, state_out in ((states[0], states[1]), (states[1], states[0])):
            binding = self.session.io_binding()
            for name, value in zip(("features", "h", "c"), (features, *state_in)):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self.output_names, (error, *state_out)):
                binding.bind_ortvalue_output(name, value)
            self.bindings.append(binding)
        self.calls = 0

    def predict(self, x_ref: float, y_ref: float, vx_ref: float, vy_ref: float) -> tuple[float, float, float]:
        started = time.perf_counter()
        f = self.features[0]
        if self.history is None:  # before the first sample, the velocity history holds the first velocity
            self.history = deque([(vx_ref, vy_ref)] * (max(self.lags, default=0) + 1), maxlen=max(self.lags, default=0) + 1)
        previous = self.history[-1]
        self.history.append((vx_ref, vy_ref))
        k = 0
        if self.position:
            f[0], f[1], k = x_ref, y_ref, 2
        f[k], f[k + 1] = vx_ref, vy_ref
        k += 2
        if self.acceleration:
            f[k], f[k + 1] = (vx_ref - previous[0]) * self.rate, (vy_ref - previous[1]) * self.rate
            k += 2
        for lag in self.lags:
            f[k], f[k + 1] = self.history[-1 - lag]
            k += 2
        self.session.run_with_iobinding(self.bindings[self.calls & 1])  # this call's output state is the next one's input
        self.calls += 1
        return float(self.error[0, 0]), float(self.error[0, 1]), (time.perf_counter() - started) * 1000
