"""World model and metrics: shapes through encoder, dynamics and decoder; PSNR/SSIM against torchmetrics'
functional forms and closed forms; gradient checkpointing; parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from kiln.engine.schedules import build_optimizer
from kiln.recipes.world.config import WorldConfig
from kiln.recipes.world.task import WorldTask, frame_psnr, frame_ssim

from .conftest import TINY_MODEL


def make_cfg(**model):
    return WorldConfig.model_validate({"data": {"generate": None, "sequence_length": 5, "eval_horizon": 10},
                                       "model": {**TINY_MODEL, **model}})


def test_shapes_through_encoder_dynamics_and_decoder():
    task = WorldTask(make_cfg(latent_dim=6), {"action_dim": 3})
    frames, actions = torch.rand(2, 5, 3, 32, 32), torch.rand(2, 5, 3)
    latents, content = task.model.encode(frames, context=2)
    assert latents.shape == (2, 5, 6, 8, 8)  # 32 / 2^2 = init_size 8
    assert [c.shape for c in content] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 3, 32, 32)]  # the last observed frame: features, itself
    assert task.model.dynamics(latents[:, :2], actions[:, 1]).shape == (2, 6, 8, 8)
    assert task.model.rollout(latents[:, :2], actions[:, 1:4]).shape == (2, 3, 6, 8, 8)
    assert task.model.decode(latents, content).shape == frames.shape
    out = task.predict(frames, actions, steps=3)
    assert out["pred"].shape == (2, 3, 3, 32, 32)
    # the untrained dynamics is the identity step, so every rolled-out latent equals the last observed one,
    # and the untrained decoder's change is zero: the prediction is copy-last exactly
    torch.testing.assert_close(out["rolled"], latents[:, 1:2].expand(2, 3, 6, 8, 8))
    torch.testing.assert_close(out["pred"], frames[:, 1:2].expand(2, 3, 3, 32, 32))
    plain = WorldTask(make_cfg(decoder={**TINY_MODEL["decoder"], "predict_change": False, "skip_connections": False}), {"action_dim": 3})
    decoded = plain.predict(frames, actions, steps=3)["pred"]
    assert decoded.shape == (2, 3, 3, 32, 32) and 0 <= decoded.min() and decoded.max() <= 1


def test_the_rollout_depends_on_the_actions():
    torch.manual_seed(0)
    task = WorldTask(make_cfg(), {"action_dim": 3})
    torch.nn.init.normal_(task.model.dynamics.out[-1].weight, std=0.1)
    latents = torch.randn(1, 2, 4, 8, 8)
    left, right = (task.model.rollout(latents, torch.tensor([[[s, 0.5, 0.0]] * 2])) for s in (-1.0, 1.0))
    assert (left - right).abs().mean() > 1e-3


def test_frame_psnr_and_ssim_agree_with_torchmetrics_and_closed_forms():
    torch.manual_seed(1)
    target = torch.rand(4, 3, 32, 32)
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    psnr = frame_psnr(pred, target)
    for i in range(4):  # per-frame: each value is torchmetrics' PSNR of that frame alone
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(pred[i:i + 1], target[i:i + 1], data_range=1.0).item(), rel=1e-5)
        assert frame_ssim(pred, target)[i].item() == pytest.approx(
            structural_similarity_index_measure(pred[i:i + 1], target[i:i + 1], data_range=1.0).item(), rel=1e-5)
    # a constant offset d has MSE d^2, so PSNR = 10 log10(1 / d^2)
    offset = frame_psnr(torch.full((1, 3, 8, 8), 0.6), torch.full((1, 3, 8, 8), 0.5))
    assert offset.item() == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-5)
    assert frame_ssim(target, target).min().item() == pytest.approx(1.0, abs=1e-5)
    assert frame_psnr(target, target).max().item() == 60.0  # identical frames: capped, not inf


def test_ssim_as_matrix_products_equals_torchmetrics_values_and_gradients():
    """ssim_fp32 applies the Gaussian window as blur(H) @ X @ blur(W).T; torchmetrics convolves with the 11x11 window
    after reflect padding. Same values and gradients, on a non-square batch with structure and noise."""
    from kiln.recipes.world.task import ssim_fp32

    torch.manual_seed(4)
    target = torch.nn.functional.avg_pool2d(torch.rand(5, 3, 28, 44), 5, stride=1)    # [5, 3, 24, 40]
    pred = (target + 0.05 * torch.randn_like(target)).clamp(0, 1).requires_grad_()
    ours = ssim_fp32(pred, target, reduction="none")
    reference = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert ssim_fp32(pred, target).item() == pytest.approx(reference.mean().item(), rel=1e-5)
    weight = torch.rand(5)
    (grad,) = torch.autograd.grad((ours * weight).sum(), pred)
    (want,) = torch.autograd.grad((reference * weight).sum(), pred)
    torch.testing.assert_close(grad, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def test_ssim_and_the_perceptual_loss_stay_float32_under_bf16_autocast():
    # smooth, similar frames like CarRacing's: in bf16 the Gaussian-window variances of SSIM cancel to noise
    torch.manual_seed(3)
    target = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 36, 36), 5, stride=1).clamp(0, 1)  # [4, 3, 32, 32]
    pred = (target + 0.01 * torch.randn_like(target)).clamp(0, 1)
    reference = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")  # float32, no autocast
    task = WorldTask(make_cfg(), {"action_dim": 3})
    frames = torch.stack([target] * 3, 1)  # a window of 3: 2 observed, 1 predicted; every decoded frame is `pred`
    out = {"recon": torch.stack([pred] * 3, 1), "pred": pred[:, None],
           "latents": torch.zeros(4, 3, 4, 8, 8), "rolled": torch.zeros(4, 1, 4, 8, 8)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(frame_ssim(pred, target), reference)
        perceptual = task.losses(frames, out, steps=1)["perceptual_loss"]
    assert perceptual.item() == pytest.approx(1 - reference.mean().item(), rel=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    cfg = make_cfg()
    plain = WorldTask(cfg, {"action_dim": 3})
    checkpointed = WorldTask(cfg.model_copy(update={"model": cfg.model.model_copy(update={"gradient_checkpointing": True})}),
                             {"action_dim": 3})
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.model.encoder.checkpointing and checkpointed.model.decoder.checkpointing
    batch = {"frames": torch.randint(0, 256, (2, 5, 32, 32, 3), dtype=torch.uint8), "actions": torch.rand(2, 5, 3)}
    plain.augment = checkpointed.augment = None
    for task in (plain, checkpointed):
        task.training_step(batch)["loss"].backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_module_learning_rates_become_parameter_groups():
    groups = {"model.encoder": {"lr": 1e-5}, "model.decoder": {"lr": 3e-4}, "model.dynamics": {"weight_decay": 0.0}}
    cfg = WorldConfig.model_validate({"data": {"generate": None}, "model": TINY_MODEL,
                                      "train": {"lr": 1e-3, "param_groups": groups}})
    task = WorldTask(cfg, {"action_dim": 3})
    optimizer = build_optimizer(task, cfg.train)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["model.encoder"]["lr"] == 1e-5 and groups["model.decoder"]["lr"] == 3e-4
    assert groups["model.dynamics"]["lr"] == 1e-3 and groups["model.dynamics"]["weight_decay"] == 0.0
    encoder_params = {id(p) for p in task.model.encoder.parameters()}
    assert {id(p) for p in groups["model.encoder"]["params"]} == encoder_params


def test_frame_size_and_stages_must_agree():
    with pytest.raises(Exception, match="init_size"):
        WorldConfig.model_validate({"model": {**TINY_MODEL}, "data": {"generate": {"size": 64}}})
