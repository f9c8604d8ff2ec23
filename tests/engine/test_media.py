"""TensorBoard gets per-step scalars, the task's images and histograms, and weight/gradient histograms."""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kiln.engine.media import MediaLog


def test_step_scalars_media_and_histograms_reach_tensorboard(toy_cfg, run_toy):
    # 64 samples / 16 = 4 steps per epoch, 2 epochs: validations at steps 4 and 8
    cfg = toy_cfg(max_epochs=2, loggers=["tensorboard", "csv"], log_every_n_steps=3, log_histograms=True)
    _, run_dir = run_toy("tb", cfg)
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"histograms": 0, "images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train_loss_step")] == [3, 6]
    assert [e.step for e in events.Scalars("val_loss")] == [4, 8]
    assert {"toy/residuals", "weights/head.weight", "gradients/head.weight", "gradients/head.bias"} <= set(tags["histograms"])
    assert [e.step for e in events.Histograms("gradients/head.weight")] == [4, 8]
    image = events.Images("toy/residual_map")
    assert [e.step for e in image] == [4, 8] and image[0].height == 8


def test_media_log_without_image_loggers_is_false_and_does_nothing():
    media = MediaLog([])
    assert not media
    media.image("x", torch.zeros(3, 4, 4), 0)  # no logger takes it: nothing happens
