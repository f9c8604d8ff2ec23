"""`kiln export RUN --format onnx|torchscript|safetensors`: a run's model as a deployable file.

The task's `export_module(batch)` hook gives a plain tensor-in, tensor-out module and its inputs built
from held-out samples. The module is exported with a dynamic batch axis (traced at batch 2), then run
again, from the written file, on the held-out inputs at other batch sizes; the largest absolute
difference from PyTorch must stay within PARITY in fp32. A file that fails the check is not kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kiln.config import RunConfig
from kiln.engine.evaluate import load_run_task
from kiln.engine.files import make_dirs
from kiln.errors import KilnError

PARITY = 1e-5
SAMPLES = 16        # held-out samples the parity check runs on
TRACE_BATCH = 2     # the batch size the export is traced at; parity runs at others
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def first_samples(split, count: int) -> dict[str, Tensor]:
    """The first `count` samples of a split (in-memory tensors or a map-style dataset) as one batch."""
    if isinstance(split, dict):
        return {k: v[:count] for k, v in split.items()}
    from kiln.engine.batches import collate

    indices = list(range(min(count, len(split))))
    return collate(split.__getitems__(indices) if hasattr(split, "__getitems__") else [split[i] for i in indices])


def as_tuple(out) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def write_onnx(module: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
    import logging

    for noisy in ("torch.onnx._internal.exporter._registration", "onnxscript"):  # "torchvision is not installed", folding notes
        logging.getLogger(noisy).setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")
    # a module may name its graph's inputs and outputs (`input_names`, `output_names`), e.g. a seed's deployment names
    names = list(getattr(module, "input_names", None) or [f"input_{i}" for i in range(len(inputs))])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, tuple(x[:TRACE_BATCH] for x in inputs), str(path), dynamo=True, verbose=False,
                              input_names=names, output_names=getattr(module, "output_names", None),
                              dynamic_shapes=tuple({0: batch} for _ in inputs), external_data=False)
        except Exception as err:
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise KilnError(f"ONNX export failed: {reason}; an operator of this model has no ONNX form yet, "
                            f"try --format torchscript or --format safetensors") from None


def run_onnx(path: Path, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), inputs)}
    return tuple(torch.from_numpy(out) for out in session.run(None, feeds))


def write_torchscript(module: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, yet still the common deployment format
        try:
            traced = torch.jit.trace(module, tuple(x[:TRACE_BATCH] for x in inputs), check_trace=False)
        except Exception as err:
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise KilnError(f"TorchScript tracing failed: {reason}; try --format onnx") from None
        torch.jit.save(traced, str(path))


def run_torchscript(path: Path, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return as_tuple(torch.jit.load(str(path))(*inputs))


def write_safetensors(module: nn.Module, cfg: RunConfig, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"kiln_recipe": cfg.recipe, "kiln_config": json.dumps(cfg.model_dump(mode="json"))})


def run_safetensors(path: Path, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Load the written weights into a copy of the module and run it: shows the file holds every weight."""
    import copy

    from safetensors.torch import load_file

    fresh = copy.deepcopy(module)
    for param in fresh.state_dict().values():
        param.zero_()
    fresh.load_state_dict(load_file(str(path)))
    return as_tuple(fresh(*inputs))


def export_run(run_dir: Path, recipe, cfg: RunConfig, fmt: str, out: Path | None = None,
               weights: str = "best_model.pt") -> dict[str, Any]:
    """Write the export, check parity on held-out samples, and describe the result (the CLI prints it as JSON)."""
    if not (run_dir / weights).is_file():
        raise KilnError(f"'{run_dir}' has no {weights} to export; train it first (kiln train CONFIG --run-dir {run_dir})")
    if cfg.phases:
        run_dir, cfg = run_dir / f"phase_{len(cfg.phases)}", cfg.phase_configs()[-1][2]  # the run's weights are its last phase's
    recipe.prepare_data(cfg, lambda message: None)
    splits = recipe.load_data(cfg, lambda message: None)
    task = load_run_task(run_dir, recipe, splits.info, which=weights).float()
    with torch.no_grad():
        exported = task.export_module(first_samples(splits.test, SAMPLES))
    if exported is None:
        raise KilnError(f"this {recipe.name} model ({getattr(cfg.model, 'arch', type(task).__name__)}) has nothing to export")
    module, inputs = exported
    module = module.float().eval()
    if len(inputs[0]) < SAMPLES // 2:
        raise KilnError(f"the test split has only {len(inputs[0])} samples; the parity check needs at least {SAMPLES // 2}")

    path = Path(out) if out else run_dir / "export" / f"model{SUFFIX[fmt]}"
    make_dirs(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        if fmt == "onnx":
            write_onnx(module, inputs, tmp)
        elif fmt == "torchscript":
            write_torchscript(module, inputs, tmp)
        else:
            write_safetensors(module, cfg, tmp)
        worst, sizes = 0.0, sorted({len(inputs[0]), 1, TRACE_BATCH + 1})
        for size in sizes:  # batch sizes other than the traced one show the batch axis is really dynamic
            part = tuple(x[:size] for x in inputs)
            expected = as_tuple(module(*part))
            got = (run_onnx(tmp, part) if fmt == "onnx" else run_torchscript(tmp, part) if fmt == "torchscript"
                   else run_safetensors(tmp, module, part))
            if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
                tmp.unlink()
                raise KilnError(f"the {fmt} export gives outputs of other shapes than PyTorch at batch size {size}; "
                                f"the model does not trace with a dynamic batch axis, try another --format")
            worst = max([worst] + [(g.float() - e.float()).abs().max().item() for g, e in zip(got, expected)])
    if worst > PARITY:
        tmp.unlink()
        raise KilnError(f"the {fmt} export differs from PyTorch by up to {worst:.3g} (> {PARITY:g}) on held-out samples; "
                        f"not written. The traced graph likely depends on the batch size; try another --format")
    os.replace(tmp, path)
    return {"path": str(path), "format": fmt, "max_abs_diff": worst, "batch_sizes_checked": sizes,
            "inputs": [list(x.shape[1:]) for x in inputs], "weights": weights}
