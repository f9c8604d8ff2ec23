"""The generator's step-by-step rollout as one autograd Function: the stacked LSTM with scheduled sampling, its
forward pass on preallocated buffers and its backward pass (back-propagation through time) written out.

Why not nn.LSTM once per step: at hidden 256 and batch 32 on a CPU, oneDNN sets up its RNN primitive on every
call (~1.8 ms forward and ~4 ms backward per layer and step, against ~0.25 ms for each matrix product the step
needs) and autograd records some 40 nodes per step. Here a layer's step is one matrix product (its input and its
previous hidden state lie side by side in one buffer, its two weight matrices side by side) and a few in-place
element-wise operations; the backward pass computes everything that does not depend on the incoming gradient for
all steps at once, and each weight's gradient is one matrix product over all steps after the loop.

Step t, with L layers of hidden size H (i, f, g, o are nn.LSTM's gates, in its order):

    fed_t = (truth_{t-1} where use_truth_{t-1} else out_{t-1}) + noise_t       fed_0 = 0 + noise_0
    layer k: x = fed_t (k = 0), or keep_{k-1,t} * h_{k-1,t} (dropout between layers; 1 without)
             gates = base_k + [x, h_{k,t-1}] W_k^T  (W_k = [W_ih_k, W_hh_k]);  i, f, o = sigmoid(.), g = tanh(.)
             c_{k,t} = f * c_{k,t-1} + i * g;  h_{k,t} = o * tanh(c_{k,t})
    out_t = h_{L-1,t} W_head^T + b_head

base_0 [T, B, 4H] is what is known ahead of layer 0's gates (the parameters' and the position's share and both
biases, computed outside with autograd), so W_0 holds only layer 0's weights on the fed components; base_k
(k >= 1) is layer k's two biases. The random draws (noise, keep, use_truth) are made by the caller; the truth is
data and gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


@dataclass
class Tape:
    """What the forward pass keeps for the backward pass: every step, or only the latest one when no gradient is
    wanted (free-running generation), so that generating a large batch needs no history."""

    inputs: list[Tensor]  # per layer [S + 1, B, In_k + H]: [x_{k,t}, h_{k,t-1}] at position t
    gates: Tensor         # [L, S, B, 4H] i, f, g, o after their nonlinearities
    tanh_cell: Tensor     # [L, S, B, H]
    cell: Tensor          # [L, S + 1, B, H] c_{k,t-1} at position t (the initial state at 0)


def forward_steps(base0: Tensor, h_init: Tensor, c_init: Tensor, truth: Tensor | None, use_truth: Tensor | None,
                  noise: Tensor | None, keep: Tensor | None, bias: Tensor, head_weight: Tensor, head_bias: Tensor,
                  weights: tuple[Tensor, ...], record: bool) -> tuple[Tensor, Tape]:
    """The T steps (module docstring) -> (outputs [T, B, C], the tape; every step only with `record`)."""
    T, B, G = base0.shape
    L, H, C = len(weights), G // 4, head_weight.shape[0]
    widths = [w.shape[1] - H for w in weights]  # In_k: C for layer 0, H above
    S, states = (T, T + 1) if record else (1, 1)
    new = base0.new_empty
    tape = Tape(inputs=[new(states, B, width + H) for width in widths], gates=new(L, S, B, G),
                tanh_cell=new(L, S, B, H), cell=new(L, states, B, H))
    for k in range(L):
        tape.inputs[k][0, :, widths[k]:] = h_init[k]
    tape.cell[:, 0] = c_init
    out = new(T, B, C)
    for t in range(T):
        now, after = (t, t + 1) if record else (0, 0)  # without history a step overwrites the one before
        fed = tape.inputs[0][now, :, :C]
        if t == 0:
            fed.zero_()
        elif use_truth is None:
            fed.copy_(out[t - 1])
        else:
            torch.where(use_truth[t - 1], truth[t - 1], out[t - 1], out=fed)
        if noise is not None:
            fed.add_(noise[t])
        for k in range(L):
            gates = torch.addmm(base0[t] if k == 0 else bias[k - 1], tape.inputs[k][now], weights[k].t(),
                                out=tape.gates[k, now])
            gates[:, :2 * H].sigmoid_()
            gates[:, 2 * H:3 * H].tanh_()
            gates[:, 3 * H:].sigmoid_()
            i, f, g, o = gates.chunk(4, 1)
            c = torch.mul(f, tape.cell[k, now], out=tape.cell[k, after]).addcmul_(i, g)
            h = torch.mul(o, torch.tanh(c, out=tape.tanh_cell[k, now]), out=tape.inputs[k][after, :, widths[k]:])
            if k < L - 1:
                above = tape.inputs[k + 1][now, :, :H]
                torch.mul(h, keep[k, t], out=above) if keep is not None else above.copy_(h)
        torch.addmm(head_bias, h, head_weight.t(), out=out[t])
    return out, tape


def backward_steps(d_out: Tensor, tape: Tape, use_truth: Tensor | None, keep: Tensor | None, head_weight: Tensor,
                   weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Back-propagation through the T steps: d(loss)/d(outputs) [T, B, C] -> the gradients of forward_steps'
    differentiable inputs (base0, h_init, c_init, bias, head weight, head bias, weights...)."""
    T = d_out.shape[0]
    L, _, B, G = tape.gates.shape
    H = G // 4
    widths = [w.shape[1] - H for w in weights]
    # What does not depend on the incoming gradient, for every layer and step at once. With slope_X the derivative of
    # gate X through its nonlinearity: d(gates) = [d_c g slope_i, d_c c_prev slope_f, d_c i slope_g, d_h tanh(c) slope_o]
    i, f, g, o = tape.gates.chunk(4, -1)                                           # [L, T, B, H] each
    slope = tape.gates - tape.gates.square()                                       # sigmoid' = s - s^2
    slope[..., 2 * H:3 * H] = 1 - g.square()                                       # tanh' = 1 - g^2
    by_cell = torch.cat([g, tape.cell[:, :-1], i], -1).mul_(slope[..., :3 * H]).unflatten(-1, (3, H))
    by_hidden = slope[..., 3 * H:].mul_(tape.tanh_cell)                            # d(gate o) / d(h)
    cell_by_hidden = o * (1 - tape.tanh_cell.square())                            # d(c) / d(h) within the step
    d_gates = torch.empty_like(tape.gates)     # d(loss)/d(pre-activation gates), every layer and step
    d_own = torch.empty_like(d_out)             # d(loss)/d(out_t): directly and through fed_{t+1}
    d_hidden = list(d_out.new_zeros(L, B, H))   # d(loss)/d(h_{k,t}) through step t + 1
    d_cell = d_out.new_zeros(L, B, H)
    fed_own = None if use_truth is None else (~use_truth).to(d_out.dtype)  # 1 where step t + 1 was fed out_t
    d_fed = None
    for t in reversed(range(T)):
        if d_fed is None:
            d_own[t] = d_out[t]
        elif fed_own is None:
            torch.add(d_out[t], d_fed, out=d_own[t])
        else:
            torch.addcmul(d_out[t], d_fed, fed_own[t], out=d_own[t])
        d_x = d_own[t] @ head_weight                  # d(loss)/d(the top layer's h_t) from the head
        for k in reversed(range(L)):
            d_h = d_hidden[k].add_(d_x)
            d_c = d_cell[k].addcmul_(d_h, cell_by_hidden[k, t])
            d_g = d_gates[k, t]
            torch.mul(by_cell[k, t], d_c[:, None], out=d_g[:, :3 * H].unflatten(-1, (3, H)))
            torch.mul(d_h, by_hidden[k, t], out=d_g[:, 3 * H:])
            d_c.mul_(f[k, t])                         # now d(loss)/d(c_{k,t-1})
            d_in = d_g @ weights[k]                   # d(loss)/d([x_{k,t}, h_{k,t-1}])
            d_x, d_hidden[k] = d_in[:, :widths[k]], d_in[:, widths[k]:]
            if keep is not None and k > 0:
                d_x = d_x * keep[k - 1, t]            # through the dropout below layer k
        d_fed = d_x
    flat = lambda x: x.flatten(0, 1)  # noqa: E731  [T, B, X] -> [T * B, X]: a weight's gradient summed over steps
    d_weights = tuple(flat(d_gates[k]).t() @ flat(tape.inputs[k][:T]) for k in range(L))
    d_head_weight = flat(d_own).t() @ flat(tape.inputs[L - 1][1:, :, widths[L - 1]:])
    return (d_gates[0], torch.stack(d_hidden), d_cell, d_gates[1:].sum((1, 2)), d_head_weight, d_own.sum((0, 1)),
            *d_weights)


def scheduled_sampling_lstm(base0: Tensor, h_init: Tensor, c_init: Tensor, truth: Tensor | None,
                            use_truth: Tensor | None, noise: Tensor | None, keep: Tensor | None, bias: Tensor,
                            head_weight: Tensor, head_bias: Tensor, weights: list[Tensor]) -> Tensor:
    """The rollout's outputs [T, B, C] (module docstring), differentiable in base0, h_init, c_init, bias, the head and
    the weights. None for truth and use_truth: free-running; for noise or keep: none of it. bias [L - 1, 4H] are
    layers 1...'s; weights[k] is W_k [4H, In_k + H]."""
    record = torch.is_grad_enabled()  # under no_grad (generation) the steps keep no history
    return ScheduledSamplingLSTM.apply(record, base0, h_init, c_init, truth, use_truth, noise, keep, bias, head_weight,
                                       head_bias, *weights)


class ScheduledSamplingLSTM(torch.autograd.Function):
    """forward_steps with backward_steps as its gradient (called through scheduled_sampling_lstm)."""

    @staticmethod
    def forward(ctx, record, base0, h_init, c_init, truth, use_truth, noise, keep, bias, head_weight, head_bias, *weights):
        out, tape = forward_steps(base0, h_init, c_init, truth, use_truth, noise, keep, bias, head_weight, head_bias,
                                  weights, record)
        if record:
            ctx.save_for_backward(tape.gates, tape.tanh_cell, tape.cell, use_truth, keep, head_weight, *weights, *tape.inputs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        gates, tanh_cell, cell, use_truth, keep, head_weight, *rest = ctx.saved_tensors
        weights, inputs = rest[:len(rest) // 2], rest[len(rest) // 2:]
        d_base0, d_h, d_c, d_bias, d_head_weight, d_head_bias, *d_weights = backward_steps(
            d_out, Tape(list(inputs), gates, tanh_cell, cell), use_truth, keep, head_weight, tuple(weights))
        return (None, d_base0, d_h, d_c, None, None, None, None, d_bias, d_head_weight, d_head_bias, *d_weights)
