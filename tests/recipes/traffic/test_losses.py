import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions import Categorical, MixtureSameFamily, Normal

from kiln.recipes.traffic.losses import mixture_diversity, mixture_entropy, mixture_log_prob, mixture_nll, mixture_usage_kl


def random_mixture(shape=(4, 5), k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(*shape, k, generator=g, dtype=dtype)
    stds = 0.2 + torch.rand(*shape, k, generator=g, dtype=dtype) * 2
    logits = torch.randn(*shape, k, generator=g, dtype=dtype)
    target = 3 * torch.randn(*shape, generator=g, dtype=dtype)
    return means, stds, logits, target


def torch_reference(means, stds, logits, target):
    return MixtureSameFamily(Categorical(logits=logits), Normal(means, stds)).log_prob(target)


def scipy_reference(means, stds, logits, target):
    weights = torch.softmax(logits, -1).numpy()
    density = (weights * norm.pdf(target.numpy()[..., None], means.numpy(), stds.numpy())).sum(-1)
    return np.log(density)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_log_prob_matches_torch_and_scipy(k):
    means, stds, logits, target = random_mixture(k=k, seed=k)
    ours = mixture_log_prob(means, stds, logits, target)
    assert ours.shape == target.shape
    torch.testing.assert_close(ours, torch_reference(means, stds, logits, target))
    np.testing.assert_allclose(ours.numpy(), scipy_reference(means, stds, logits, target), rtol=1e-10)


def test_log_prob_float32_matches_torch():
    means, stds, logits, target = random_mixture(k=4, dtype=torch.float32)
    torch.testing.assert_close(mixture_log_prob(means, stds, logits, target), torch_reference(means, stds, logits, target))


def test_log_prob_is_finite_for_tiny_std_and_far_target():
    # every component is 1e-4 wide and the target sits 50 sigma (or more) from each: exp() would underflow to 0
    means = torch.tensor([0.0, 0.001, -0.002])
    stds = torch.full((3,), 1e-4)
    logits = torch.zeros(3)
    target = torch.tensor(0.005)
    ours = mixture_log_prob(means, stds, logits, target)
    assert torch.isfinite(ours)
    # the nearest component (mean 0.001, 40 sigma) dominates; compare to the exact float64 answer
    exact = torch_reference(means.double(), stds.double(), logits.double(), target.double())
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=0)
    assert ours < -700  # far below what exp-then-log could represent in float32

    means, stds, logits, target = means.requires_grad_(), stds.requires_grad_(), logits.requires_grad_(), target
    mixture_nll(means, stds, logits, target).backward()
    assert all(torch.isfinite(t.grad).all() for t in (means, stds, logits))


def test_log_prob_with_extreme_logits():
    means = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    stds = torch.ones(2, 2)
    logits = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])
    target = torch.tensor([0.0, 0.0])
    ours = mixture_log_prob(means, stds, logits, target)
    assert torch.isfinite(ours).all()
    # weight 1 on N(0, 1) at its mean; weight 1 on N(5, 1) five sigma away (the other weight is e^-100)
    torch.testing.assert_close(ours, torch.tensor([-0.5 * math.log(2 * math.pi), -12.5 - 0.5 * math.log(2 * math.pi)]))


def test_nll_is_mean_and_respects_mask():
    means, stds, logits, target = random_mixture(shape=(6, 7), k=3)
    log_prob = torch_reference(means, stds, logits, target)
    torch.testing.assert_close(mixture_nll(means, stds, logits, target), -log_prob.mean())

    mask = torch.rand(6, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    target_with_gaps = target.masked_fill(~mask, float("nan"))  # missing readings must not leak NaN
    ours = mixture_nll(means, stds, logits, target_with_gaps, mask)
    torch.testing.assert_close(ours, -log_prob[mask].mean())

    means.requires_grad_()
    mixture_nll(means, stds, logits, target_with_gaps, mask).backward()
    assert torch.isfinite(means.grad).all()
    assert (means.grad[~mask] == 0).all()


def test_nll_mask_broadcasts_and_empty_mask_is_zero():
    means, stds, logits, target = random_mixture(shape=(3, 4), k=2)
    node_mask = torch.tensor([True, False, True, True])
    full = node_mask.expand(3, 4)
    torch.testing.assert_close(mixture_nll(means, stds, logits, target, node_mask), mixture_nll(means, stds, logits, target, full))
    empty = mixture_nll(means, stds, logits, target, torch.zeros(3, 4, dtype=torch.bool))
    assert empty.item() == 0.0


def test_nll_of_narrow_component_is_negative():
    # a sharp forecast right at the target has density 1 / (0.01 sqrt(2 pi)) ~ 40, so NLL ~ -3.7
    means = torch.tensor([[1.0, 3.0]])
    stds = torch.tensor([[0.01, 1.0]])
    logits = torch.tensor([[2.0, 0.0]])
    target = torch.tensor([1.0])
    ours = mixture_nll(means, stds, logits, target)
    w = torch.softmax(logits, -1)[0].numpy()
    expected = -np.log(w[0] * norm.pdf(1.0, 1.0, 0.01) + w[1] * norm.pdf(1.0, 3.0, 1.0))
    assert ours.item() < 0
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_diversity_is_zero_for_one_component_and_bounded():
    means, stds, _, _ = random_mixture(k=1)
    assert mixture_diversity(means, stds).item() == 0.0
    for k in (2, 3, 6):
        means, stds, _, _ = random_mixture(k=k, seed=k)
        value = mixture_diversity(means, stds).item()
        assert -1.0 <= value <= 0.0
    # identical components are not diverse at all; hugely separated ones approach -1
    assert mixture_diversity(torch.zeros(3), torch.ones(3)).item() == 0.0
    assert mixture_diversity(torch.tensor([0.0, 1e6, -1e6]), torch.ones(3)).item() == pytest.approx(-1.0)


def test_diversity_matches_pairwise_formula():
    means, stds, _, _ = random_mixture(shape=(2, 3), k=4)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected = -torch.stack([torch.tanh((means[..., i] - means[..., j]).abs() / (stds[..., i] + stds[..., j])) for i, j in pairs]).mean()
    torch.testing.assert_close(mixture_diversity(means, stds), expected)


def test_diversity_decreases_with_separation_and_gradient_spreads_means():
    stds = torch.ones(3)
    close = mixture_diversity(torch.tensor([0.0, 0.5, 1.0]), stds)
    far = mixture_diversity(torch.tensor([0.0, 2.0, 4.0]), stds)
    assert far < close < 0

    means = torch.tensor([-0.3, 0.1, 0.4], requires_grad=True)
    mixture_diversity(means, stds).backward()
    step = means.detach() - 0.1 * means.grad  # one gradient-descent step on the regulariser
    assert means.grad[0] > 0 and means.grad[2] < 0  # outer components are pushed outwards
    assert (step.max() - step.min()) > (means.max() - means.min()).detach()


def test_entropy_limits():
    for k in (2, 3, 7):
        assert mixture_entropy(torch.zeros(5, k)).item() == pytest.approx(math.log(k))
    dominant = torch.tensor([[60.0, 0.0, 0.0], [0.0, 0.0, 60.0]])
    assert 0 <= mixture_entropy(dominant).item() < 1e-20
    assert mixture_entropy(torch.tensor([0.0, float("-inf")])).item() == 0.0


def test_entropy_matches_torch_categorical():
    logits = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mixture_entropy(logits), Categorical(logits=logits).entropy().mean())


def test_usage_kl_matches_torch_kl_and_its_limits():
    from torch.distributions import kl_divergence

    logits = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    usage = torch.softmax(logits, -1).reshape(-1, 3).mean(0)
    expected = kl_divergence(Categorical(probs=usage), Categorical(probs=torch.full((3,), 1 / 3, dtype=torch.float64)))
    torch.testing.assert_close(mixture_usage_kl(logits), expected)
    assert mixture_usage_kl(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-7)  # every component 1/3
    one_hot = torch.tensor([[50.0, 0.0, 0.0]]).expand(8, 3)
    assert mixture_usage_kl(one_hot).item() == pytest.approx(math.log(3), abs=1e-6)
    # a component used only by one forecast each still balances: usage is averaged over forecasts
    assert mixture_usage_kl(50 * torch.eye(3)).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([True, False, False])
    assert mixture_usage_kl(50 * torch.eye(3), mask).item() == pytest.approx(math.log(3), abs=1e-6)
