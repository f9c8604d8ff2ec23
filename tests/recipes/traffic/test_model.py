"""STMGT: shapes of its graph-attention and temporal branches, graph information flow, the mixture head."""

from __future__ import annotations

import torch

from kiln.recipes.traffic.model import STMGT, STBlock, batched_edges

PATH = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])  # 5 nodes in a line


def make_model(**kw) -> STMGT:
    args = dict(num_nodes=5, edge_index=PATH, seq_len=6, pred_len=3, hidden_dim=16, num_heads=2, num_blocks=2,
                mixture_components=3, dropout=0.0, drop_edge_p=0.0, speed_mean=20.0, speed_std=5.0)
    torch.manual_seed(0)
    return STMGT(**{**args, **kw}).eval()


def inputs(batch=2, weather=0):
    torch.manual_seed(1)
    x = torch.randn(batch, 5, 6)
    hour, dow = torch.randint(0, 24, (batch, 9)), torch.randint(0, 7, (batch, 9))
    return x, hour, dow, (torch.randn(batch, 9, weather) if weather else None)


def test_batched_edges_offsets_each_copy():
    edges = batched_edges(PATH, 5, 3)
    assert edges.shape == (2, 24)
    assert torch.equal(edges[:, 8:16], PATH + 5) and torch.equal(edges[:, 16:], PATH + 10)


def test_st_block_keeps_shape_and_mixes_only_along_edges_in_space():
    torch.manual_seed(0)
    block = STBlock(16, 2, 0.0).eval()
    h = torch.randn(2, 6, 5, 16)
    out = block(h, batched_edges(PATH, 5, 12))
    assert out.shape == h.shape
    bumped = h.clone()
    bumped[0, :, 0] += 1.0  # change node 0 at every step of sample 0
    delta = (block(bumped, batched_edges(PATH, 5, 12)) - out).abs().sum(-1)  # [B, T, N]
    assert delta[0, :, 1].min() > 0          # its neighbour sees it (graph attention)
    assert delta[0, :, 2:].max() == 0        # two hops away is untouched by one block
    assert delta[1].max() == 0               # other samples are independent


def test_temporal_branch_mixes_time_within_a_node():
    torch.manual_seed(0)
    block = STBlock(16, 2, 0.0).eval()
    h = torch.randn(1, 6, 5, 16)
    bumped = h.clone()
    bumped[0, 0, 4] += 1.0  # node 4, first step only
    delta = (block(bumped, batched_edges(PATH, 5, 6)) - block(h, batched_edges(PATH, 5, 6))).abs().sum(-1)
    assert delta[0, 5, 4] > 0                # a later step of the same node changes (self-attention over time)


def test_forward_shapes_and_positive_stds():
    model = make_model()
    out = model(*inputs()[:3])
    for key in ("means", "stds", "logits"):
        assert out[key].shape == (2, 5, 3, 3)
    assert (out["stds"] >= 0.01).all()


def test_patches_and_weather_branch():
    model = make_model(patch_len=3, weather_dim=3, weather_mean=[27.0, 6.0, 0.1], weather_std=[2.0, 3.0, 0.3])
    x, hour, dow, weather = inputs(weather=3)
    out = model(x, hour, dow, weather)
    assert out["means"].shape == (2, 5, 3, 3)
    changed = model(x, hour, dow, weather + 1.0)["means"]
    assert not torch.allclose(changed, out["means"])  # traffic attends to the weather tokens
    out["means"].sum().backward()
    assert model.weather_encoder.weight.grad.abs().sum() > 0
    assert make_model().weather_encoder is None  # no weather data, no weather branch


def test_predict_denormalises_to_the_data_unit():
    model = make_model()
    x, hour, dow, _ = inputs()
    raw = x * 5.0 + 20.0
    pred = model.predict(raw, temporal={"hour": hour, "dow": dow})
    normalised = model(x, hour, dow)
    torch.testing.assert_close(pred["means"], normalised["means"] * 5.0 + 20.0)
    torch.testing.assert_close(pred["stds"], normalised["stds"] * 5.0)
    torch.testing.assert_close(pred["logits"], normalised["logits"])


def test_predict_with_another_graph_keeps_the_stored_one():
    model = make_model().eval()
    x, hour, dow, _ = inputs()
    temporal = {"hour": hour, "dow": dow}
    before = model.predict(x, temporal=temporal)["means"]
    no_edges = model.predict(x, edge_index=torch.zeros(2, 0, dtype=torch.long), temporal=temporal)["means"]
    assert not torch.allclose(no_edges, before)  # the call used the graph it was given
    torch.testing.assert_close(model.edge_index, PATH)
    torch.testing.assert_close(model.predict(x, temporal=temporal)["means"], before)


def test_drop_edge_only_in_training():
    model = make_model(drop_edge_p=0.5)
    assert model.graph(4).shape[1] == 4 * PATH.shape[1]
    model.train()
    torch.manual_seed(0)
    assert model.graph(4).shape[1] < 4 * PATH.shape[1]


def random_graph(num_nodes=7, seed=3):
    """A directed graph with in-degrees 0..4, a self loop and a repeated edge (which GATv2Conv keeps as two)."""
    g = torch.Generator().manual_seed(seed)
    edges = [(int(s), t) for t in range(num_nodes) for s in torch.randperm(num_nodes, generator=g)[: t % 5] if s != t]
    edges += [(2, 2), (0, 3), (0, 3)]
    return torch.tensor(edges).t()


def test_neighbor_table_gatv2_equals_gatv2conv_outputs_and_gradients():
    """The dense neighbour-table attention against torch_geometric's GATv2Conv on the same weights (the reference)."""
    from torch_geometric.nn import GATv2Conv

    from kiln.recipes.traffic.model import NeighborTableGATv2, neighbor_table

    edge_index, N, M = random_graph(), 7, 3
    torch.manual_seed(0)
    reference = GATv2Conv(8, 4, heads=2, add_self_loops=True).eval()
    dense = NeighborTableGATv2(8, 4, heads=2, add_self_loops=True).eval()
    dense.load_state_dict(reference.state_dict())
    x = torch.randn(M, N, 8, requires_grad=True)
    neighbors, valid = neighbor_table(edge_index, N)
    assert neighbors.shape[1] == 1 + int(torch.bincount(edge_index[1][edge_index[0] != edge_index[1]], minlength=N).max())
    got = dense(x, neighbors, valid[None])
    want = reference(x.reshape(M * N, 8), batched_edges(edge_index, N, M)).view(M, N, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    weight = torch.randn_like(got)
    grads = torch.autograd.grad((got * weight).sum(), [x, *dense.parameters()])
    want_grads = torch.autograd.grad((want * weight).sum(), [x, *reference.parameters()])
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_stmgt_with_dense_attention_equals_the_gatv2conv_model_and_drops_only_edges():
    graph = random_graph(5, seed=1)
    reference, dense = make_model(edge_index=graph), make_model(edge_index=graph, dense_attention=True)
    dense.load_state_dict(reference.state_dict())
    x, hour, dow, _ = inputs()
    for key, value in reference(x, hour, dow).items():
        torch.testing.assert_close(dense(x, hour, dow)[key], value, rtol=1e-4, atol=1e-5)
    dense.train()
    dense.drop_edge_p = 0.5
    neighbors, mask = dense.graph(40)
    _, valid = dense._graph_cache
    assert mask.shape == (40, *valid.shape) and mask[:, :, 0].all()  # self loops are never dropped
    assert not (mask & ~valid).any()  # padding never becomes an edge
    real_edges = valid[None, :, 1:].expand_as(mask[:, :, 1:])
    share = 1 - mask[:, :, 1:][real_edges].float().mean()
    assert 0.35 < share < 0.65  # about drop_edge_p of the real edges are dropped, a fresh draw per copy


def weather_copies(model: STMGT, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The reference for STMGT.attend_weather (and bench/quick_steps.py's baseline): every node attends to its own
    copy of the window's tokens (repeat_interleave), as STMGT did before. q [B, N, P, D], tokens [B, T+P, D]."""
    B, N, P, D = q.shape
    copies = tokens.repeat_interleave(N, dim=0)                               # [B * N, T+P, D]
    return model.weather_attention(model.weather_norm(q).reshape(B * N, P, D), copies, copies,
                                   need_weights=False)[0].view(B, N, P, D)


def test_weather_attention_over_a_window_equals_one_copy_of_the_tokens_per_node():
    """attend_weather shares the window's tokens among its nodes; the reference gives every node its own copy:
    the same outputs and gradients on the same weights."""
    model = make_model(weather_dim=3).train()
    B, N, P, D = 2, 5, 3, 16
    torch.manual_seed(2)
    q, tokens = torch.randn(B, N, P, D, requires_grad=True), torch.randn(B, 9, D, requires_grad=True)
    shared = model.attend_weather(q, tokens)
    reference = weather_copies(model, q, tokens)
    torch.testing.assert_close(shared, reference, rtol=1e-5, atol=1e-6)
    weight = torch.randn_like(shared)
    grads = torch.autograd.grad((shared * weight).sum(), [q, tokens, *model.weather_attention.parameters()])
    reference_grads = torch.autograd.grad((reference * weight).sum(), [q, tokens, *model.weather_attention.parameters()])
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
