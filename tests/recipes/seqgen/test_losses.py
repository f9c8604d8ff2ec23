import numpy as np
import pytest
import torch


def ar1_sequences(batch=3, steps=151, channels=2, phi=0.8, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, steps, channels))
    noise = rng.normal(size=(batch, steps, channels))
    for t in range(1, steps):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return torch.tensor(x, dtype=torch.float64)


def test_autocorrelation_matches_statsmodels_acf():
    from statsmodels.tsa.stattools import acf

    from kiln.recipes.seqgen.losses import autocorrelation

    x = ar1_sequences()
    ours = autocorrelation(x, 20)
    assert ours.shape == (3, 20, 2)
    for b in range(3):
        for c in range(2):
            expected = acf(x[b, :, c].numpy(), nlags=20, fft=False)[1:]
            np.testing.assert_allclose(ours[b, :, c].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_autocorrelation_loss_is_blind_to_amplitude_and_offset():
    """The documented weakness: 2 * y + 3 has exactly y's ACF, so the loss is 0 while the values are far off."""
    from kiln.recipes.seqgen.losses import AutocorrelationLoss

    y = ar1_sequences().float()
    loss = AutocorrelationLoss(max_lag=10)
    assert loss(2 * y + 3, y).item() == pytest.approx(0.0, abs=1e-5)
    assert torch.nn.functional.l1_loss(2 * y + 3, y).item() > 2.5
    # ... but it does see other dynamics: white noise against an AR(1) process with phi = 0.8
    white = torch.randn_like(y)
    assert loss(white, y).item() > 0.2


def test_autocorrelation_loss_gradient_grows_as_the_prediction_flattens():
    """Scale invariance has a price (docs/seqgen.md, "Choosing alpha"): the loss is homogeneous of degree 0 in the
    prediction, so its gradient is homogeneous of degree -1: at 0.1 * x it is exactly 10x the gradient at x, while
    the MAE's gradient keeps its size. An untrained, nearly flat generator gets a large ACF gradient."""
    from kiln.recipes.seqgen.losses import AutocorrelationLoss

    y = ar1_sequences().float()
    x = torch.randn_like(y)
    loss = AutocorrelationLoss(max_lag=10)

    def gradient(pred: torch.Tensor, fn) -> torch.Tensor:
        pred = pred.clone().requires_grad_(True)
        fn(pred, y).backward()
        return pred.grad

    torch.testing.assert_close(gradient(0.1 * x, loss), 10 * gradient(x, loss), rtol=1e-3, atol=1e-9)
    mae = torch.nn.functional.l1_loss  # each element's gradient is +-1 / N at any scale: the same norm
    assert gradient(0.1 * x, mae).norm().item() == pytest.approx(gradient(x, mae).norm().item())


def test_combined_loss_returns_the_weighted_sum_and_its_parts():
    from statsmodels.tsa.stattools import acf

    from kiln.recipes.seqgen.losses import CombinedMAEAutocorrLoss

    y = ar1_sequences(seed=1).float()
    pred = y + 0.3 * torch.randn_like(y)
    combined, mae, autocorr = CombinedMAEAutocorrLoss(alpha=0.25, max_lag=5)(pred, y)
    assert mae.item() == pytest.approx((pred - y).abs().mean().item(), rel=1e-6)
    acf_gap = np.mean([np.abs(acf(pred[b, :, c].numpy(), nlags=5, fft=False)[1:] - acf(y[b, :, c].numpy(), nlags=5, fft=False)[1:])
                       for b in range(3) for c in range(2)])
    assert autocorr.item() == pytest.approx(acf_gap, rel=1e-4)
    assert combined.item() == pytest.approx(0.25 * mae.item() + 0.75 * autocorr.item(), rel=1e-6)
