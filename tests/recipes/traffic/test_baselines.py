"""Baseline traffic forecasters: shapes, gradients, graph operators, locality, reference parity, learnability."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import laplacian as scipy_laplacian

from kiln.recipes.traffic.baselines import (
    ASTGCN,
    BASELINES,
    ChebConvWithAttention,
    GraphWaveNet,
    TGCN,
    LSTMForecaster,
    chebyshev_polynomials,
    gcn_propagation,
    scaled_laplacian,
)

N = 12


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation (and stalls badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_graph(n: int, seed: int, symmetric: bool = True) -> torch.Tensor:
    """Weighted graph with a ring (so it is connected), random chords and a few self loops."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, n, generator=g) < 0.25).float() * torch.rand(n, n, generator=g)
    ring = torch.roll(torch.eye(n), 1, dims=1) * (0.5 + torch.rand(n, generator=g))
    a = a + ring
    if symmetric:
        a = a + a.T
    a.fill_diagonal_(0)
    a[0, 0], a[3, 3] = 1.0, 0.5
    return a


def path_graph(n: int) -> torch.Tensor:
    a = torch.zeros(n, n)
    idx = torch.arange(n - 1)
    a[idx, idx + 1] = a[idx + 1, idx] = 1.0
    return a


def build(name: str, n: int, in_len: int, out_len: int, adjacency: torch.Tensor, **kw):
    return BASELINES[name](n, in_len, out_len, adjacency, **kw)


# -----------------------------------------------------------------------------
# shapes and gradients


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("in_len,out_len", [(12, 6), (12, 12), (16, 3)])
def test_output_shape_and_gradients_reach_every_parameter(name, in_len, out_len):
    torch.manual_seed(0)
    model = build(name, N, in_len, out_len, random_graph(N, 1)).train()
    x = torch.randn(4, N, in_len)
    y = model(x)
    assert y.shape == (4, N, out_len)
    ((y - torch.randn_like(y)) ** 2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_astgcn_time_strides_shape():
    model = ASTGCN(N, 12, 5, random_graph(N, 2), time_strides=2, nb_chev_filter=8, nb_time_filter=8)
    assert model(torch.randn(3, N, 12)).shape == (3, N, 5)


def test_graphwavenet_adaptive_only_and_missing_graph():
    model = GraphWaveNet(N, 12, 4, None, adaptive=True)
    assert model(torch.randn(2, N, 12)).shape == (2, N, 4)
    with pytest.raises(ValueError):
        GraphWaveNet(N, 12, 4, None, adaptive=False)
    with pytest.raises(ValueError):
        ASTGCN(N, 12, 4, None)
    with pytest.raises(ValueError):
        TGCN(N, 12, 4, None)


def test_derived_matrices_are_buffers_that_follow_the_module():
    for name in BASELINES:
        model = build(name, N, 12, 4, random_graph(N, 3)).double()
        assert all(b.dtype == torch.float64 for b in model.buffers() if b.is_floating_point())
        assert model(torch.randn(2, N, 12, dtype=torch.float64)).dtype == torch.float64
        keys = model.state_dict().keys()
        assert not any(k.endswith(("supports", "polynomials", "propagation")) for k in keys)


# -----------------------------------------------------------------------------
# graph operators


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scaled_laplacian_matches_scipy(seed):
    a = random_graph(15, seed)
    a_np = a.double().numpy()
    lap = scipy_laplacian(a_np, normed=True)  # ignores the diagonal (self loops), like the model
    expected = 2 * lap / np.linalg.eigvalsh(lap).max() - np.eye(15)
    got = scaled_laplacian(a)
    np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-5)
    eig = np.linalg.eigvalsh(got.double().numpy())
    assert eig.min() >= -1 - 1e-5 and eig.max() <= 1 + 1e-5
    assert abs(eig.max() - 1) < 1e-5  # lambda_max maps exactly to 1


def test_scaled_laplacian_symmetrises_a_directed_graph():
    a = random_graph(10, 4, symmetric=False)
    assert not torch.equal(a, a.T)
    torch.testing.assert_close(scaled_laplacian(a), scaled_laplacian((a + a.T) / 2))


def test_chebyshev_polynomials_are_cos_k_arccos_on_the_spectrum():
    lt = scaled_laplacian(random_graph(10, 5)).double()
    eigval, eigvec = torch.linalg.eigh(lt)
    polys = chebyshev_polynomials(lt, 4)
    theta = torch.arccos(eigval.clamp(-1, 1))
    for k in range(4):
        expected = eigvec @ torch.diag(torch.cos(k * theta)) @ eigvec.T
        torch.testing.assert_close(polys[k], expected)


def test_gcn_propagation_matches_torch_geometric_gcn_norm():
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    a = random_graph(N, 9).fill_diagonal_(0)  # symmetric, weighted
    edges = a.nonzero().T
    edge_index, weight = gcn_norm(edges, a[edges[0], edges[1]], N, add_self_loops=True)
    expected = torch.zeros(N, N)
    expected[edge_index[1], edge_index[0]] = weight  # PyG aggregates messages j -> i into row i
    torch.testing.assert_close(gcn_propagation(a), expected)
    # self_loop 2 over a graph without loops is the reference's A + I over a file adjacency with a unit diagonal
    eye = torch.eye(N)
    degree = (a + 2 * eye).sum(1)
    torch.testing.assert_close(gcn_propagation(a, 2.0), (a + 2 * eye) / (degree[:, None] * degree[None, :]).sqrt())


def test_graphwavenet_transition_matrices_and_adaptive_adjacency():
    a = random_graph(N, 6, symmetric=False)
    model = GraphWaveNet(N, 12, 4, a)
    a_np = a.numpy().astype(np.float64)
    forward, backward = model.supports.double().numpy()
    np.testing.assert_allclose(forward, a_np / a_np.sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(backward, a_np.T / a_np.T.sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(forward.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(backward.sum(1), 1, atol=1e-6)
    adp = model.adaptive_adjacency().detach()
    assert (adp >= 0).all()
    torch.testing.assert_close(adp.sum(1), torch.ones(N))


# -----------------------------------------------------------------------------
# parity with the reference implementations' formulations


def reference_graph_wavenet(m: GraphWaveNet, x: torch.Tensor) -> torch.Tensor:
    """nnzhan/Graph-WaveNet model.py forward, in its [B, C, N, T] Conv2d/einsum layout, run on m's weights (eval)."""
    conv1x1 = lambda lin, h: F.conv2d(h, lin.weight[:, :, None, None], lin.bias)  # noqa: E731
    h = x.unsqueeze(1)
    if h.shape[3] < m.receptive_field:
        h = F.pad(h, (m.receptive_field - h.shape[3], 0, 0, 0))
    h = conv1x1(m.start_conv, h)
    supports = list(m.supports) + [m.adaptive_adjacency()]
    skip = 0
    for i, d in enumerate(m.dilations):
        residual = h
        w = m.gated_convs[i].weight  # [2 C_dil, k C_res] with taps outermost -> Conv2d kernel [2 C_dil, C_res, 1, k]
        w = w.view(w.shape[0], m.kernel_size, -1).permute(0, 2, 1).unsqueeze(2)
        filt, gate = F.conv2d(residual, w, m.gated_convs[i].bias, dilation=(1, d)).chunk(2, dim=1)
        h = torch.tanh(filt) * torch.sigmoid(gate)
        s = conv1x1(m.skip_convs[i], h)
        skip = s if isinstance(skip, int) else s + skip[:, :, :, -s.shape[3]:]
        if i == len(m.dilations) - 1:  # the reference goes on through a graph conv whose output nothing reads
            break
        out = [h]
        for a in supports:
            x1 = torch.einsum("ncvl,vw->ncwl", h, a)
            x2 = torch.einsum("ncvl,vw->ncwl", x1, a)
            out += [x1, x2]
        h = conv1x1(m.graph_convs[i].mlp, torch.cat(out, dim=1)) + residual[:, :, :, -x1.shape[3]:]
        bn = m.norms[i]
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    h = conv1x1(m.end_conv_2, F.relu(conv1x1(m.end_conv_1, F.relu(skip))))  # [B, out_len, N, T_final]
    return h[..., -1].transpose(1, 2)


@pytest.mark.parametrize("in_len", [12, 16])  # padded to the receptive field (13), and longer than it
def test_graphwavenet_matches_reference_layout(in_len):
    torch.manual_seed(0)
    model = GraphWaveNet(N, in_len, 5, random_graph(N, 7, symmetric=False))
    for bn in model.norms:  # non-trivial running statistics so eval-mode batch norm is exercised
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(3, N, in_len)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_graph_wavenet(model, x), atol=1e-5, rtol=1e-4)


def reference_tgcn(m: TGCN, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """lehaifeng/T-GCN T-GCN-PyTorch: models/tgcn.py (TGCNGraphConvolution's layout and transposes, TGCNCell) and
    tasks/supervised.py's linear regressor, run on m's weights; x [B, N, T] -> [B, N, out_len]."""
    a = adjacency + torch.eye(len(adjacency))  # utils/graph_conv.calculate_laplacian_with_self_loop
    d = torch.diag(a.sum(1).pow(-0.5))
    laplacian = a.matmul(d).transpose(0, 1).matmul(d)
    batch, nodes, hidden = x.shape[0], x.shape[1], m.hidden_dim

    def graph_conv(lin, inputs, state):
        cat = torch.cat((inputs.reshape(batch, nodes, 1), state.reshape(batch, nodes, hidden)), dim=2)
        cat = cat.transpose(0, 1).transpose(1, 2).reshape(nodes, (hidden + 1) * batch)
        ac = (laplacian @ cat).reshape(nodes, hidden + 1, batch).transpose(0, 2).transpose(1, 2)
        out = ac.reshape(batch * nodes, hidden + 1) @ lin.weight.T + lin.bias
        return out.reshape(batch, nodes * lin.out_features)

    state = torch.zeros(batch, nodes * hidden)
    for t in range(x.shape[2]):
        r, u = torch.chunk(torch.sigmoid(graph_conv(m.gates.linear, x[:, :, t], state)), chunks=2, dim=1)
        c = torch.tanh(graph_conv(m.candidate.linear, x[:, :, t], r * state))
        state = u * state + (1.0 - u) * c
    return m.regressor(state.reshape(batch, nodes, hidden))


def test_tgcn_matches_reference_layout():
    torch.manual_seed(0)
    a = random_graph(N, 10).fill_diagonal_(0)
    model = TGCN(N, 12, 5, a, hidden_dim=8).eval()
    x = torch.randn(3, N, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_tgcn(model, a, x), atol=1e-5, rtol=1e-4)


def test_cheb_conv_matches_reference_time_loop():
    torch.manual_seed(0)
    polys = chebyshev_polynomials(scaled_laplacian(random_graph(N, 8)), 3)
    conv = ChebConvWithAttention(polys, 5, 7)
    torch.nn.init.normal_(conv.theta)
    x, attention = torch.randn(2, N, 5, 6), torch.rand(2, N, N).softmax(dim=1)
    outputs = []  # ASTGCN-r-pytorch cheb_conv_withSAt.forward
    for t in range(x.shape[3]):
        out = 0
        for k in range(len(polys)):
            out = out + (polys[k] * attention).permute(0, 2, 1).matmul(x[:, :, :, t]).matmul(conv.theta[k])
        outputs.append(out.unsqueeze(-1))
    torch.testing.assert_close(conv(x, attention), F.relu(torch.cat(outputs, dim=-1)), atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# does graph information flow (and only along the graph where that is exact)


def perturbation_change(model, n: int, j: int, in_len: int = 12) -> torch.Tensor:
    """Max |output change| per node when only node j's input changes (eval mode: no dropout, fixed batch norm)."""
    torch.manual_seed(1)
    x = torch.randn(2, n, in_len)
    x2 = x.clone()
    x2[:, j] += torch.randn(2, in_len)
    with torch.no_grad():
        return (model.eval()(x2) - model(x)).abs().amax(dim=(0, 2))


def test_graphwavenet_is_local_on_a_path():
    # 2 blocks x 2 layers: graph convs in the first 3 layers (the last layer only feeds the skips), 2 hops each
    torch.manual_seed(0)
    n, j, hops = 16, 3, 6
    model = GraphWaveNet(n, 12, 4, path_graph(n), blocks=2, layers=2, adaptive=False)
    change = perturbation_change(model, n, j)
    distance = (torch.arange(n) - j).abs()
    assert (change[distance <= hops] > 0).all()  # influence decays ~2x per hop, so only non-zero is asserted
    assert (change[distance > hops] == 0).all()


def test_graphwavenet_uses_a_directed_graph_both_ways():
    n = 8
    a = torch.zeros(n, n)
    a[torch.arange(n - 1), torch.arange(1, n)] = 1.0  # directed chain 0 -> 1 -> ... -> 7
    model = GraphWaveNet(n, 12, 4, a, blocks=1, layers=2, adaptive=False)  # one graph conv: 2 hops
    change = perturbation_change(model, n, 4)
    assert (change[2:7] > 1e-6).all() and (change[[0, 1, 7]] == 0).all()


def test_astgcn_perturbation_reaches_neighbours():
    torch.manual_seed(0)
    n, j = 10, 4
    model = ASTGCN(n, 12, 4, path_graph(n), nb_chev_filter=16, nb_time_filter=16)
    change = perturbation_change(model, n, j)
    assert change[j - 1] > 1e-6 and change[j + 1] > 1e-6


def test_astgcn_chebyshev_conv_is_k_minus_1_hop_local():
    torch.manual_seed(0)
    n, j, k = 12, 5, 3
    conv = ChebConvWithAttention(chebyshev_polynomials(scaled_laplacian(path_graph(n)), k), 4, 6)
    torch.nn.init.normal_(conv.theta)
    attention = torch.rand(1, n, n)
    x = torch.randn(1, n, 4, 6)
    x2 = x.clone()
    x2[:, j] += 1.0
    change = (conv(x2, attention) - conv(x, attention)).abs().amax(dim=(0, 2, 3))
    distance = (torch.arange(n) - j).abs()
    assert (change[distance > k - 1] == 0).all()
    assert change[j - 1] > 0 and change[j + 1] > 0


def test_lstm_has_no_cross_node_flow():
    torch.manual_seed(0)
    n, j = 10, 6
    change = perturbation_change(LSTMForecaster(n, 12, 4), n, j)
    assert change[j] > 1e-6
    assert (change[torch.arange(n) != j] == 0).all()


# -----------------------------------------------------------------------------
# learnability


def sinusoid_windows(num: int, n: int, in_len: int, out_len: int, seed: int):
    """Node n follows sin(2 pi t / 12 + phase_n) with node-specific amplitudes; the target continues the window."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.linspace(0, 2 * torch.pi, n + 1)[:n]
    amplitude = torch.linspace(0.5, 1.5, n)
    start = torch.randint(0, 500, (num, 1, 1), generator=g).float()
    t = start + torch.arange(in_len + out_len).float()
    series = amplitude[:, None] * torch.sin(2 * torch.pi * t / 12 + phase[:, None])  # [num, n, in+out]
    return series[..., :in_len], series[..., in_len:]


SMALL = {
    "lstm": dict(hidden_dim=32, dropout=0.0),
    "graphwavenet": dict(residual_channels=16, dilation_channels=16, skip_channels=32, end_channels=64,
                         blocks=2, layers=2, dropout=0.0),
    "astgcn": dict(nb_chev_filter=16, nb_time_filter=16),
    "tgcn": dict(hidden_dim=32),
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_learns_sinusoid_continuation(name):
    torch.manual_seed(0)
    n, in_len, out_len = 6, 12, 6
    x, y = sinusoid_windows(64, n, in_len, out_len, seed=0)
    x_val, y_val = sinusoid_windows(64, n, in_len, out_len, seed=1)
    model = build(name, n, in_len, out_len, path_graph(n), **SMALL[name])

    def val_mse():
        with torch.no_grad():
            return F.mse_loss(model.eval()(x_val), y_val).item()

    before = val_mse()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(250):
        model.train()
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_mse()
    assert after < before / 5, (before, after)
