"""Per-sample latency of the printer recipe's streaming predictor against the original guide's.

The guide's StreamingPredictor keeps the last 20 samples and re-runs that window through the model in eager
PyTorch for every new sample; kiln's keeps the LSTM state and runs one step per sample on ONNX Runtime.
Both run the same LSTM (the quick config's size, or a trained run's with --run) over the same simulated layer,
one sample at a time, each as a stream of its own (a deployment runs one of them, not both in turns): kiln's
whole layer, then the guide's, for --rounds rounds so that a change of load hits both alike; the first 50 calls
of each round are dropped. Then kiln's predictor once more at the machine's pace, one sample per millisecond
(sleeping between samples, as a 1 kHz control loop in Python does).
The last line is JSON: ratio (the guide's median per-sample time over kiln's), p50_ms and p99_ms (kiln's wall-clock
latency, back to back), paced_p50_ms and paced_p99_ms (the same at 1 kHz), cpu_p99_ms (kiln's per-sample CPU time
of this thread, back to back: the latency without the time the scheduler gave to other processes) and load (the
1-minute load average).

    .venv/bin/python bench/printer_stream.py [--run runs/printer/demo] [--samples 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from kiln.recipes.printer.config import PrinterConfig, PrinterGenerator
from kiln.recipes.printer.data import GUIDE_FEATURES, feature_names, stream_features
from kiln.recipes.printer.gcode import read_gcode
from kiln.recipes.printer.evaluation import predict_stream
from kiln.recipes.printer.procedural_prints import procedural_gcode
from kiln.recipes.printer.sim import Printer, simulate_moves
from kiln.recipes.printer.stream import StreamingPredictor, load_lstm_task
from kiln.recipes.printer.task import PrinterTask

WINDOW = 20  # the guide's StreamingPredictor(seq_len=20)


class GuideStreamingPredictor:
    """The guide's Stage 5 example: a deque of the last 20 samples, normalised, re-run through the model."""

    def __init__(self, model, mean: np.ndarray, std: np.ndarray, seq_len: int = WINDOW):
        self.model, self.mean, self.std = model, mean, std
        self.history = deque(maxlen=seq_len)

    def predict(self, features: np.ndarray):
        self.history.append(features)
        sequence = (np.array(self.history) - self.mean) / self.std
        input_tensor = torch.FloatTensor(sequence).unsqueeze(0)
        with torch.no_grad():
            prediction = self.model(input_tensor)[0][:, -1]
        return prediction[0].numpy()


def task_and_features(run: Path | None) -> tuple[PrinterTask, np.ndarray, list]:
    """A task (a trained run's, or the quick config's shape with its initial weights: latency does not depend on
    the weights) and the features and the guide's inputs (x_ref, y_ref, vx_ref, vy_ref) of one simulated layer."""
    settings = PrinterGenerator(model_layers=10)
    trajectory = simulate_moves(Printer(settings), read_gcode(procedural_gcode("boat", 10)), "boat", "first:2")[-1]
    if run is not None:
        task = load_lstm_task(run)
    else:
        cfg = PrinterConfig.model_validate({"recipe": "printer", "data": {"position": False},
                                            "model": {"hidden_size": 32, "num_layers": 2, "dropout": 0.0}})
        names = feature_names(cfg.data.position, cfg.data.acceleration, cfg.data.velocity_lags_ms)
        info = {"feature_names": names, "sample_rate": 1000.0, "feature_mean": [0.0] * len(names),
                "feature_std": [50.0] * len(names), "error_mean": [0.0, 0.0], "error_std": [0.02, 0.02]}
        torch.manual_seed(0)
        task = PrinterTask(cfg, info).eval()
    data = task.feature_names
    lags = [float(n[6:-2]) for n in data if n.startswith("vx_lag")]
    features = stream_features(trajectory.signals, task.sample_rate, "x_ref" in data, "ax_ref" in data, lags)
    guide_inputs = [tuple(trajectory.signals[k][i] for k in GUIDE_FEATURES) for i in range(len(features))]
    return task, features, guide_inputs


def paced(predictor: StreamingPredictor, inputs: list, period_s: float = 1e-3) -> list[float]:
    """Per-sample latency (ms) with one sample per `period_s`: sleep through most of each period, then wait for
    its start, as a soft real-time loop in Python does."""
    predictor.reset()
    latencies, tick = [], time.perf_counter()
    for sample in inputs:
        tick += period_s
        if tick - time.perf_counter() > 3e-4:
            time.sleep(tick - time.perf_counter() - 2e-4)
        while time.perf_counter() < tick:
            pass
        latencies.append(predictor.predict(*sample)[2])
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained printer run (default: the quick config's LSTM shape)")
    parser.add_argument("--samples", type=int, default=3000, help="samples streamed by each predictor")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of kiln's stream then the guide's")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task, features, guide_inputs = task_and_features(args.run)
    n = min(args.samples, len(features))
    with tempfile.TemporaryDirectory() as tmp:
        ours = StreamingPredictor.from_task(task, Path(tmp) / "stream_step.onnx")
        guide = GuideStreamingPredictor(task.model, np.array(task.stats["feature_mean"]), np.array(task.stats["feature_std"]))

        # the streamed errors equal the LSTM's outputs on the whole sequence (what makes one step per sample enough)
        reference = predict_stream(task, torch.from_numpy(features[:200]))
        streamed = np.array([ours.predict(*guide_inputs[i])[:2] for i in range(200)])
        parity = float(np.abs(streamed - reference).max())

        kiln_ms, kiln_cpu_ms, guide_ms = [], [], []
        for _ in range(args.rounds):
            ours.reset()
            round_ms, round_cpu_ms = [], []
            for i in range(n):
                cpu_started = time.thread_time_ns()
                round_ms.append(ours.predict(*guide_inputs[i])[2])
                round_cpu_ms.append((time.thread_time_ns() - cpu_started) / 1e6)
            kiln_ms += round_ms[50:]
            kiln_cpu_ms += round_cpu_ms[50:]
            round_ms = []
            for i in range(n):
                started = time.perf_counter()
                guide.predict(features[i])
                round_ms.append((time.perf_counter() - started) * 1000)
            guide_ms += round_ms[50:]
        paced_ms = paced(ours, guide_inputs[:n])[50:]
    kiln_ms, kiln_cpu_ms, guide_ms, paced_ms = (np.array(v) for v in (kiln_ms, kiln_cpu_ms, guide_ms, paced_ms))
    p = {name: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) for name, v in (("kiln", kiln_ms), ("guide", guide_ms))}
    print(f"LSTM {task.model.lstm.num_layers}x{task.model.lstm.hidden_size}, {len(task.feature_names)} features, {n} samples each "
          f"(torch {torch.__version__}, 1 thread)")
    print(f"  guide: re-run a {WINDOW}-step window in eager PyTorch  p50 {p['guide'][0]:.4f} ms  p99 {p['guide'][1]:.4f} ms")
    print(f"  kiln: one LSTM step, state kept, ONNX Runtime      p50 {p['kiln'][0]:.4f} ms  p99 {p['kiln'][1]:.4f} ms")
    print(f"  kiln at 1 kHz (sleeping between samples)           p50 {np.percentile(paced_ms, 50):.4f} ms  "
          f"p99 {np.percentile(paced_ms, 99):.4f} ms")
    print(f"  kiln's CPU time per sample (this thread, no preemption)  p50 {np.percentile(kiln_cpu_ms, 50):.4f} ms  "
          f"p99 {np.percentile(kiln_cpu_ms, 99):.4f} ms  (load average {os.getloadavg()[0]:.1f})")
    print(f"  streamed vs whole-sequence LSTM: max |difference| {parity:.2e} mm")
    print(json.dumps({"ratio": round(p["guide"][0] / p["kiln"][0], 2), "p50_ms": round(p["kiln"][0], 5), "p99_ms": round(p["kiln"][1], 5),
                      "guide_p50_ms": round(p["guide"][0], 5), "guide_p99_ms": round(p["guide"][1], 5),
                      "paced_p50_ms": round(float(np.percentile(paced_ms, 50)), 5),
                      "paced_p99_ms": round(float(np.percentile(paced_ms, 99)), 5), "parity_mm": parity,
                      "cpu_p99_ms": round(float(np.percentile(kiln_cpu_ms, 99)), 5), "load": round(os.getloadavg()[0], 2),
                      "samples": n}))


if __name__ == "__main__":
    sys.exit(main())
