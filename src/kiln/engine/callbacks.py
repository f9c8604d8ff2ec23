"""What a run does besides training, one callback each: the loop (loop.py) calls them in order.

    on_start(run)                       a fresh run is about to train (not called on --resume)
    on_update(run, loss, grad_norm)     after each optimizer step; the gradients are still there
    on_validation(run, row, improved)   after each validation point; `row` is the history row, which a
                                        callback may extend (gradient statistics) or end the run from
                                        (run.stop_reason = "early_stopping")
    on_end(run, outcome)                training stopped: "finished", "interrupted" or "failed"
    state_dict() / load_state_dict()    what a callback must keep across --resume: its keys of the checkpoint
                                        (state_dict's are added to every checkpoint; load_state_dict reads the
                                        checkpoint it resumes from)

The order matters where one callback reads what another wrote: statistics extend the row before the
loggers log it and the checkpoints save it. A new concern (e.g. the sweep's pruning) is one more class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from kiln.engine.checkpoint import link_aliases
from kiln.engine.health import HealthMonitor

if TYPE_CHECKING:
    from kiln.engine.loop import Run


class Callback:
    def on_start(self, run: Run) -> None:
        pass

    def on_update(self, run: Run, loss: float, grad_norm: float) -> None:
        pass

    def on_validation(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        pass

    def on_end(self, run: Run, outcome: str) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        pass


class GradientStatistics(Callback):
    """train.log_grad_norm: per validation period, the mean and max total gradient norm (before clipping) and the
    largest |gradient|. The largest |gradient| stays on the device until the period ends: no extra host sync."""

    def __init__(self):
        self.norms: list[float] = []
        self.abs_max: torch.Tensor | None = None

    def on_update(self, run: Run, loss: float, grad_norm: float) -> None:
        self.norms.append(grad_norm)
        grads = [p.grad.detach().abs().max() for p in run.task.parameters() if p.grad is not None]
        if grads:
            step_max = torch.stack(grads).max().float()
            self.abs_max = step_max if self.abs_max is None else torch.maximum(self.abs_max, step_max)

    def on_validation(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        norms = self.norms or [0.0]
        row.update(grad_norm_mean=sum(norms) / len(norms), grad_norm_max=max(norms),
                   grad_abs_max=self.abs_max.item() if self.abs_max is not None else 0.0)
        self.norms, self.abs_max = [], None


class Loggers(Callback):
    """TensorBoard / CSV / W&B (rank 0): hyperparameters, scalars per validation (and per N steps with
    train.log_every_n_steps), the task's media and, with train.log_histograms, weight and gradient histograms."""

    def __init__(self, run: Run):
        from kiln.engine.media import MediaLog, make_loggers

        self.loggers = make_loggers(run.t.loggers, run.run_dir, run.cfg.name)
        self.media = MediaLog(self.loggers)

    def on_start(self, run: Run) -> None:
        for logger in self.loggers:
            if type(logger).__name__ != "CSVLogger":  # Fabric's CSVLogger takes no hyperparameters; config.yaml has them
                logger.log_hyperparams(run.cfg.model_dump(mode="json"))

    def on_update(self, run: Run, loss: float, grad_norm: float) -> None:
        from kiln.engine.media import log_parameter_histograms

        t, step = run.t, run.state.step
        if t.log_histograms and self.media and run.ends_period():
            log_parameter_histograms(self.media, run.task, step, "gradients")
        if t.log_every_n_steps and step % t.log_every_n_steps == 0:
            for logger in self.loggers:
                logger.log_metrics({"train_loss_step": loss, "grad_norm": grad_norm, **run.learning_rates()}, step=step)

    def on_validation(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        from kiln.engine.media import log_parameter_histograms

        step = run.state.step
        for logger in self.loggers:
            logger.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")}, step=step)
        if self.media:
            with torch.no_grad():
                run.evaluated.eval()  # the validated weights (EMA when on), in eval mode
                run.evaluated.log_media(self.media, run.first_val_batch, step)
                run.model.train()
            if run.t.log_histograms:
                log_parameter_histograms(self.media, run.evaluated, step, "weights")

    def on_end(self, run: Run, outcome: str) -> None:
        for logger in self.loggers:
            logger.finalize("success")


class EMA(Callback):
    """train.ema_decay: validate and export an exponential moving average of the weights (torch's AveragedModel)."""

    def __init__(self, run: Run, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(run.task, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        run.evaluated = self.ema.module

    def on_start(self, run: Run) -> None:
        self.ema.module.load_state_dict(run.task.state_dict())  # the average starts from --init-from's weights

    def on_update(self, run: Run, loss: float, grad_norm: float) -> None:
        self.ema.update_parameters(run.task)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])


class HealthWarnings(Callback):
    """One-line warnings for loss spikes, large gradient norms and long plateaus (health.py)."""

    def __init__(self, run: Run):
        self.monitor = HealthMonitor(run.t.health, run.t.patience)

    def on_update(self, run: Run, loss: float, grad_norm: float) -> None:
        for warning in self.monitor.after_step(run.state.step, loss, grad_norm):
            run.log(f"Warning: {warning}")

    def on_validation(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        for warning in self.monitor.after_validation(run.state.best["bad_evals"], run.t.monitor):
            run.log(f"Warning: {warning}")


class EarlyStopping(Callback):
    """train.patience: stop after that many validations without a new best of train.monitor."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_validation(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        best = run.state.best
        if best["bad_evals"] >= self.patience:
            run.stop_reason = "early_stopping"
            run.log(f"Early stopping: {run.t.monitor} did not improve for {self.patience} validations "
                    f"(best {best['value']:.4f} at epoch {best['epoch']})")


class Checkpoints(Callback):
    """best.ckpt + best_model.pt on a new best, last.ckpt at every validation (rank 0), and with
    train.checkpoint_every_n_steps / _epochs also step_NNNNNNN.ckpt / epoch_NNN.ckpt. A step checkpoint that falls
    on a validation point is written after that validation, so it holds its history row."""

    def __init__(self):
        self.step_due = False

    def on_update(self, run: Run, loss: float, grad_norm: float) -> None:
        n = run.t.checkpoint_every_n_steps
        if n and run.state.step % n == 0:
            if run.ends_period():
                self.step_due = True
            else:
                run.save_checkpoint(f"step_{run.state.step:07d}.ckpt")

    def on_validation(self, run: Run, row: dict[str, Any], improved: bool) -> None:
        s, t = run.state, run.t
        if improved:
            run.save_checkpoint("best.ckpt")
            run.export("best_model.pt", row)
        run.save_checkpoint("last.ckpt")
        if self.step_due:
            run.save_checkpoint(f"step_{s.step:07d}.ckpt")
            self.step_due = False
        at_epoch_end = not t.val_every_n_steps and s.batch_in_epoch == 0
        if at_epoch_end and t.checkpoint_every_n_epochs and s.epoch % t.checkpoint_every_n_epochs == 0:
            run.save_checkpoint(f"epoch_{s.epoch:03d}.ckpt")
            if run.zero:
                link_aliases(run.run_dir, run.task.file_aliases, "checkpoints/epoch_{epoch:03d}.ckpt", epoch=s.epoch)


def default_callbacks(run: Run) -> list[Callback]:
    """The callbacks a run's config asks for, in the order they must run."""
    t = run.t
    callbacks: list[Callback] = []
    if t.log_grad_norm:
        callbacks.append(GradientStatistics())
    if t.ema_decay:
        callbacks.append(EMA(run, t.ema_decay))
    if run.zero:
        callbacks.append(Loggers(run))
    callbacks.append(HealthWarnings(run))
    if t.patience:
        callbacks.append(EarlyStopping(t.patience))
    callbacks.append(Checkpoints())
    return callbacks
