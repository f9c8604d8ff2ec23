"""The generator's rollout (recurrence.py's hand-written forward and backward) against the step loop with nn.LSTM it
replaced: same random draws, same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kiln.recipes.seqgen.model import StreamlinedSequenceGenerator


def step_loop_rollout(model: StreamlinedSequenceGenerator, params: Tensor, target: Tensor | None = None,
                      teacher_forcing: float = 0.0, noise_level: float = 0.0) -> Tensor:
    """The reference: StreamlinedSequenceGenerator.rollout as it was until 2026-12-03, nn.LSTM called once per step
    (bench/seqgen_step.py times it against the rollout)."""
    B = params.shape[0]
    if noise_level:
        params = params + noise_level * torch.randn_like(params)
    previous, state, outputs = params.new_zeros(B, 1, model.components), model.initial_state(params), []
    for t in range(model.steps):
        fed = previous + noise_level * torch.randn_like(previous) if noise_level else previous
        step = torch.cat([fed.to(params.dtype), params[:, None], model.position[t].expand(B, 1, 1)], dim=-1)  # [B, 1, 8]
        hidden, state = model.lstm(step, state)
        own = model.head(hidden)                                                           # [B, 1, 5]
        outputs.append(own)
        previous = own
        if teacher_forcing > 0:
            use_truth = torch.rand(B, 1, 1, device=params.device) < teacher_forcing
            previous = torch.where(use_truth, target[:, t:t + 1].to(own.dtype), own)
    return torch.cat(outputs, dim=1)


def run(model, rollout, params, target, teacher_forcing, noise_level):
    """One seeded training pass: outputs, the gradient of every parameter and of the conditioning, and the next draw."""
    model.zero_grad()
    params = params.clone().requires_grad_(True)
    torch.manual_seed(7)
    out = rollout(model, params, target, teacher_forcing, noise_level)
    ((out - target).abs().mean() + out.square().mean()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), grads | {"params": params.grad}, torch.rand(3)


@pytest.mark.parametrize("num_layers", [2, 1, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("teacher_forcing", [0.0, 0.6, 1.0])
def test_rollout_equals_the_step_loop_outputs_gradients_and_draws(num_layers, training, teacher_forcing):
    torch.manual_seed(0)
    model = StreamlinedSequenceGenerator(hidden_size=24, num_layers=num_layers, dropout=0.3 if num_layers > 1 else 0.0)
    with torch.no_grad():
        model.lstm.weight_ih_l0[:, :5].mul_(10)  # make the fed steps matter, so that what is fed shows in the output
    model.train(training)
    params, target = torch.randn(6, 2), torch.randn(6, 151, 5)
    ours = run(model, StreamlinedSequenceGenerator.rollout, params, target, teacher_forcing, 0.05)
    reference = run(model, step_loop_rollout, params, target, teacher_forcing, 0.05)
    torch.testing.assert_close(ours[0], reference[0], atol=1e-6, rtol=1e-5)
    assert ours[1].keys() == reference[1].keys()
    for name, grad in reference[1].items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(ours[1][name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)
    torch.testing.assert_close(ours[2], reference[2], atol=0, rtol=0)  # the same number of draws, in the same order


def test_generation_without_gradients_keeps_no_history_and_gives_the_same_sequences():
    torch.manual_seed(0)
    model = StreamlinedSequenceGenerator(hidden_size=16).eval()
    params = torch.randn(5, 2)
    with torch.no_grad():
        free = model(params)
    torch.testing.assert_close(free, step_loop_rollout(model, params).detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(free, model(params).detach(), atol=0, rtol=0)


def test_the_rollout_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    model = StreamlinedSequenceGenerator(hidden_size=16).eval()
    params = torch.randn(3, 2)
    with torch.no_grad():
        plain = model(params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(params)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, atol=0, rtol=0)
