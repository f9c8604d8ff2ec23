"""StreamlinedSequenceGenerator: an LSTM that generates a sequence step by step from 2 parameters.

At step t the LSTM sees the previous step's 5 components, the 2 conditioning parameters and the step's
position t / (T - 1); a linear head reads step t's 5 components off the top layer. The LSTM starts from a state
made from the parameters, (h0, c0) = tanh(W params + b) for every layer, as a seq2seq decoder starts from its
encoder's state (Sutskever et al. 2014): from a zero state the first steps have to build up what the parameters
say, and those steps were most of the free-running error (docs/seqgen.md). Free-running generation needs only the
parameters: step 0 is fed zeros and every later step the model's own output.

Training feeds the true previous step with probability `teacher_forcing` and the model's own prediction
otherwise (scheduled sampling, Bengio et al. 2015), in one of two ways (`model.sampling`):
- `sequential` (the guide's): one step at a time, the own prediction being the output of the step before in the
  same rollout, so errors compound in training as they do in free-running generation (gradients flow through);
- `parallel`: the own predictions come from a first, fully teacher-forced pass without gradients, so both passes
  run the LSTM over the whole sequence at once (parallel scheduled sampling with one pass, Duckworth et al. 2019).
  Faster per step (bench/seqgen_step.py), but every own prediction it mixes in was made from the true history: the
  model never sees its errors compound.
Evaluation always runs the step-by-step loop with no teacher forcing (`forward`). The step-by-step loop is
recurrence.py's forward and backward passes, written out, on nn.LSTM's own weights (calling nn.LSTM once per step
costs several times more, bench/seqgen_step.py); the sequence-at-once passes call nn.LSTM itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.recipes.seqgen.recurrence import scheduled_sampling_lstm


class StreamlinedSequenceGenerator(nn.Module):
    def __init__(self, components: int = 5, params: int = 2, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.3, steps: int = 151):
        super().__init__()
        self.components, self.steps = components, steps
        self.lstm = nn.LSTM(components + params + 1, hidden_size, num_layers, dropout=dropout, batch_first=True)
        self.head = nn.Linear(hidden_size, components)
        self.initial = nn.Linear(params, 2 * num_layers * hidden_size)  # params -> the LSTM's (h0, c0)
        self.register_buffer("position", torch.linspace(0, 1, steps), persistent=False)  # t / (T - 1)

    def initial_state(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """params [B, 2] -> (h0, c0), each [num_layers, B, hidden]: the state the first step starts from."""
        h0, c0 = torch.tanh(self.initial(params)).unflatten(-1, (2, self.lstm.num_layers, -1)).permute(1, 2, 0, 3)
        return h0.contiguous(), c0.contiguous()

    def inputs(self, previous: Tensor, params: Tensor) -> Tensor:
        """previous [B, T', 5] and params [B, 2] -> LSTM inputs [B, T', 8] for the first T' steps."""
        B, T = previous.shape[:2]
        return torch.cat([previous, params[:, None].expand(B, T, -1), self.position[None, :T, None].expand(B, T, 1)], dim=-1)

    def sequence_at_once(self, previous: Tensor, params: Tensor) -> Tensor:
        """previous [B, T, 5] (what each step is fed) and params [B, 2] -> outputs [B, T, 5], one LSTM call."""
        return self.head(self.lstm(self.inputs(previous, params), self.initial_state(params))[0])

    def teacher_forced(self, params: Tensor, target: Tensor, teacher_forcing: float = 1.0, noise_level: float = 0.0) -> Tensor:
        """Parallel training pass: params [B, 2], target [B, T, 5] (both z-scored) -> predictions [B, T, 5]."""
        start = target.new_zeros(target.shape[0], 1, self.components)
        previous = torch.cat([start, target[:, :-1]], dim=1)                                   # true step t-1
        if teacher_forcing < 1.0:
            with torch.no_grad():  # the model's own step t-1 from a teacher-forced pass; no gradient through it
                own = self.sequence_at_once(previous, params)
            own = torch.cat([start, own[:, :-1].to(previous.dtype)], dim=1)
            use_truth = torch.rand(previous.shape[:2] + (1,), device=previous.device) < teacher_forcing
            previous = torch.where(use_truth, previous, own)
        if noise_level:
            previous = previous + noise_level * torch.randn_like(previous)
            params = params + noise_level * torch.randn_like(params)
        return self.sequence_at_once(previous, params)

    def rollout(self, params: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0,
                noise_level: float = 0.0) -> Tensor:
        """Step by step: params [B, 2] (z-scored) -> sequences [B, T, 5] (z-scored). Step t is fed target[:, t-1]
        with probability `teacher_forcing` (per sequence and step) and its own output of step t-1 otherwise. In fp32
        under any autocast: the cell state sums over 151 steps."""
        if noise_level:
            params = params + noise_level * torch.randn_like(params)
        noise, keep, use_truth = self.draws(params.shape[0], teacher_forcing, noise_level, params.device)
        with torch.autocast(params.device.type, enabled=False):
            params = params.float()
            truth = None if use_truth is None else target.transpose(0, 1).float()
            bias, weights = self.layer_weights()
            out = scheduled_sampling_lstm(self.known_gates(params), *self.initial_state(params), truth, use_truth, noise,
                                          keep, bias, self.head.weight, self.head.bias, weights)
        return out.transpose(0, 1)

    def known_gates(self, params: Tensor) -> Tensor:
        """Layer 0's gate pre-activations from what every step knows ahead (the parameters, the position, both
        biases), for all steps in one product: [T, B, 4H]."""
        lstm, T = self.lstm, self.steps
        known = torch.cat([params[None].expand(T, -1, -1), self.position[:, None, None].expand(-1, params.shape[0], 1)], -1)
        gates = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, known.flatten(0, 1), lstm.weight_ih_l0[:, self.components:].t())
        return gates.unflatten(0, (T, -1))

    def layer_weights(self) -> tuple[Tensor, list[Tensor]]:
        """nn.LSTM's own weights as recurrence.py takes them: layers 1...'s biases [L - 1, 4H] and per layer
        [W_ih, W_hh] side by side (layer 0's W_ih on the fed components only; known_gates has the rest)."""
        lstm, L = self.lstm, self.lstm.num_layers
        weight = lambda name, k: getattr(lstm, f"{name}_l{k}")  # noqa: E731
        bias = torch.stack([weight("bias_ih", k) + weight("bias_hh", k) for k in range(1, L)]) if L > 1 \
            else lstm.bias_ih_l0.new_zeros(0, 4 * lstm.hidden_size)
        inputs = [lstm.weight_ih_l0[:, :self.components]] + [weight("weight_ih", k) for k in range(1, L)]
        return bias, [torch.cat([w_ih, weight("weight_hh", k)], 1) for k, w_ih in enumerate(inputs)]

    def draws(self, batch: int, teacher_forcing: float, noise_level: float, device) -> tuple[Tensor | None, ...]:
        """The rollout's random numbers, [T, ...] each or None: per step the input noise, the dropout masks between
        layers (nn.LSTM's, scaled by 1 / (1 - p)) and the teacher-forcing draw, in this order, as the step loop
        with nn.LSTM drew them: one seed gives the same training as before the loop was replaced."""
        dropout = self.lstm.dropout if self.training and self.lstm.num_layers > 1 else 0.0
        ones = torch.ones(batch, self.lstm.hidden_size, device=device)
        noise, keep, use_truth = [], [], []
        for _ in range(self.steps):
            if noise_level:
                noise.append(noise_level * torch.randn(batch, self.components, device=device))
            if dropout:
                keep.append(torch.stack([F.dropout(ones, dropout, True) for _ in range(self.lstm.num_layers - 1)]))
            if teacher_forcing > 0:
                use_truth.append(torch.rand(batch, 1, device=device) < teacher_forcing)
        return (torch.stack(noise) if noise else None, torch.stack(keep, 1) if keep else None,
                torch.stack(use_truth) if use_truth else None)

    def forward(self, params: Tensor) -> Tensor:
        """Free-running generation: params [B, 2] (z-scored) -> sequences [B, T, 5] (z-scored)."""
        return self.rollout(params)
