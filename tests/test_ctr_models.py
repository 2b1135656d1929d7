"""Tests for accel.models.ctr: the field embedding, the FM term and cross layers against direct formulas, each model's
logit against its parts, parameter groups, sparse gradients, validation, seeded init, and a small fit per model."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from accel.models.ctr import (
    CTR_MODELS,
    DCN,
    CrossNetwork,
    CrossNetworkV2,
    CTRModel,
    DCNv2,
    DeepFM,
    FieldEmbedding,
    WideAndDeep,
    fm_interaction,
    make_ctr_model,
)

DIMS = (5, 7, 3, 11)
TINY = dict(embed_dim=4, mlp_dims=(16, 8))
NAMES = sorted(CTR_MODELS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ids(batch: int, dims=DIMS, seed: int = 0) -> torch.Tensor:
    """[batch, F] valid local ids, field f uniform over 0 .. dims[f] - 1."""
    return (torch.rand(batch, len(dims), generator=_gen(seed)) * torch.tensor(dims)).long()


def _model(name: str, *, num_dense: int = 0, seed: int = 0, **kwargs) -> CTRModel:
    return make_ctr_model(name, DIMS, num_dense=num_dense, generator=_gen(seed), **{**TINY, **kwargs})


# ------------------------------------------------------------------------------------------------ field embedding


def test_field_embedding_offsets_global_ids_and_lookup():
    emb = FieldEmbedding(DIMS, 3, generator=_gen())
    assert isinstance(emb.table, nn.Embedding) and emb.table.weight.shape == (26, 3)
    assert emb.num_fields == 4 and emb.num_rows == 26
    assert emb.offsets.tolist() == [0, 5, 12, 15]
    assert "offsets" in dict(emb.named_buffers()) and "offsets" not in emb.state_dict()  # derived, not saved
    ids = torch.tensor([[0, 0, 0, 0], [4, 6, 2, 10], [1, 2, 0, 3]])
    assert emb.global_ids(ids).tolist() == [[0, 5, 12, 15], [4, 11, 14, 25], [1, 7, 12, 18]]
    out = emb(ids)
    assert out.shape == (3, 4, 3)
    torch.testing.assert_close(out, emb.table.weight[emb.global_ids(ids)])
    # int32 ids work and give int64 rows
    assert emb.global_ids(ids.int()).dtype == torch.int64
    # rows of different fields never collide: global ids are unique per (field, local id)
    every = torch.tensor(list(itertools.product(*(range(d) for d in DIMS))))
    assert emb.global_ids(every).unique().numel() == sum(DIMS)


def test_field_embedding_init_and_generator():
    emb = FieldEmbedding([1000, 1000], 10, generator=_gen(1))
    assert abs(emb.table.weight.std().item() - 1e-2) < 1e-3  # the official N(0, 0.01^2)
    assert abs(FieldEmbedding([2000], 5, init_std=0.5).table.weight.std().item() - 0.5) < 0.03
    again = FieldEmbedding([1000, 1000], 10, generator=_gen(1))
    assert torch.equal(emb.table.weight, again.table.weight)
    assert not torch.equal(emb.table.weight, FieldEmbedding([1000, 1000], 10, generator=_gen(2)).table.weight)


def test_field_embedding_validation():
    for bad in ([], [3, 0], [3, -1], 5, [2.5], None):
        with pytest.raises(ValueError, match="field_dims"):
            FieldEmbedding(bad, 4)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="embed_dim"):
            FieldEmbedding(DIMS, bad)
    with pytest.raises(ValueError, match="init_std"):
        FieldEmbedding(DIMS, 4, init_std=0.0)

    emb = FieldEmbedding(DIMS, 4)
    ids = _ids(8)
    ids[3, 2] = 3  # field 2 has 3 ids: 0..2
    with pytest.raises(ValueError, match=r"field 2: 3; expected 0 <= id < field_dims\[2\] = 3"):
        emb(ids)
    ids = _ids(8)
    ids[0, 1] = -1
    with pytest.raises(ValueError, match="field 1: -1"):
        emb(ids)
    # the check can be skipped per call or per module (ids then only need to fall inside the table)
    ids = _ids(8)
    ids[:, 0] = 5  # out of field 0's range, but row 5 exists (it is field 1's first row)
    assert emb.global_ids(ids, check=False)[0, 0] == 5
    emb.check_ids = False
    assert emb(ids).shape == (8, 4, 4)
    for bad in (_ids(8)[:, :3], _ids(8).float(), _ids(8)[0]):
        with pytest.raises(ValueError, match="ids"):
            emb(bad)


# ------------------------------------------------------------------------------------------------ interaction parts


def test_fm_interaction_matches_pairwise_sum():
    emb = torch.randn(6, 5, 3, generator=_gen(), dtype=torch.float64)
    brute = torch.zeros(6, dtype=torch.float64)
    for i, j in itertools.combinations(range(5), 2):
        brute += (emb[:, i] * emb[:, j]).sum(-1)
    torch.testing.assert_close(fm_interaction(emb), brute)


def test_cross_network_matches_per_sample_formula():
    torch.manual_seed(0)
    net = CrossNetwork(7, 3).double()
    net.reset_parameters(_gen())
    with torch.no_grad():
        net.bias.normal_(generator=_gen(1))  # zero at init; make it count
    x0 = torch.randn(5, 7, generator=_gen(2), dtype=torch.float64)
    out = net(x0)
    assert out.shape == (5, 7)
    for b in range(5):
        x = x0[b]
        for layer in range(3):
            x = x0[b] * torch.dot(x, net.weight[layer]) + net.bias[layer] + x
        torch.testing.assert_close(out[b], x)


def test_cross_network_v2_matches_per_sample_formula():
    net = CrossNetworkV2(6, 3).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.normal_(0, 0.3, generator=_gen(3))
            layer.bias.normal_(0, 0.3, generator=_gen(4))
    x0 = torch.randn(4, 6, generator=_gen(5), dtype=torch.float64)
    out = net(x0)
    assert out.shape == (4, 6)
    for b in range(4):
        x = x0[b]
        for layer in net.layers:
            x = x0[b] * (layer.weight @ x + layer.bias) + x
        torch.testing.assert_close(out[b], x)


# ------------------------------------------------------------------------------------------------ the models


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_dense", [0, 3])
def test_shapes(name, num_dense):
    model = _model(name, num_dense=num_dense)
    assert type(model) is CTR_MODELS[name] and model.name == name and isinstance(model.title, str)
    dense = torch.rand(9, num_dense, generator=_gen()) if num_dense else None
    logits = model(_ids(9), dense)
    assert logits.shape == (9,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert model(_ids(1), None if dense is None else dense[:1]).shape == (1,)
    assert model.embedding.embed_dim == 4 and model.linear.embed_dim == 1
    assert model.deep_input_dim == len(DIMS) * 4 + num_dense
    if num_dense == 0:  # an empty [B, 0] dense tensor counts as no dense features
        torch.testing.assert_close(model(_ids(9), torch.empty(9, 0)), logits)
    assert name in repr(model)


def _linear_part(model: CTRModel, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    rows = ids + model.embedding.offsets
    return model.linear.table.weight[rows, 0].sum(1) + model.bias + dense @ model.linear_dense.weight[0]


def test_models_are_the_sum_of_their_parts():
    ids, dense = _ids(7), torch.rand(7, 2, generator=_gen(1))
    for name in NAMES:
        model = _model(name, num_dense=2)
        with torch.no_grad():
            model.bias.fill_(0.3)  # zero at init; make it count
            emb = model.embedding.table.weight[ids + model.embedding.offsets]  # [B, F, d]
            x = torch.cat([emb.flatten(1), dense], 1)
            if name == "wide_deep":
                deep = model.head(model.mlp(x))[:, 0]
            elif name == "deepfm":
                deep = fm_interaction(emb) + model.head(model.mlp(x))[:, 0]
            else:
                deep = model.head(torch.cat([model.cross(x), model.mlp(x)], 1))[:, 0]
            torch.testing.assert_close(model(ids, dense), _linear_part(model, ids, dense) + deep)


def test_dropping_the_mlp_or_the_cross_network():
    ids, dense = _ids(7), torch.rand(7, 2, generator=_gen(1))
    with torch.no_grad():
        fm = _model("deepfm", num_dense=2, mlp_dims=())  # a factorisation machine
        emb = fm.embedding(ids)
        torch.testing.assert_close(fm(ids, dense), _linear_part(fm, ids, dense) + fm_interaction(emb))
        lr = _model("wide_deep", num_dense=2, mlp_dims=())  # logistic regression
        torch.testing.assert_close(lr(ids, dense), _linear_part(lr, ids, dense))
        assert len(lr.dense_parameters()) == 2  # linear_dense weight and bias
        cross_only = _model("dcn", num_dense=2, mlp_dims=())
        assert cross_only.mlp is None and cross_only.head.in_features == cross_only.deep_input_dim
        deep_only = _model("dcn_v2", num_dense=2, cross_layers=0)
        assert deep_only.cross is None and deep_only.head.in_features == 8
        for model in (cross_only, deep_only):
            assert model(ids, dense).shape == (7,)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_groups_partition_the_parameters(name):
    model = _model(name, num_dense=3)
    embedding, dense = model.embedding_parameters(), model.dense_parameters()
    assert [id(p) for p in embedding] == [id(model.embedding.table.weight), id(model.linear.table.weight)]
    ids_embedding, ids_dense = {id(p) for p in embedding}, {id(p) for p in dense}
    assert not ids_embedding & ids_dense
    assert ids_embedding | ids_dense == {id(p) for p in model.parameters()}
    assert len(embedding) + len(dense) == len(list(model.parameters()))
    counts = model.num_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == sum(DIMS) * (4 + 1)
    assert {id(model.linear_dense.weight), id(model.bias), id(model.head.weight)} <= ids_dense
    tables = model.clipped_embeddings()
    assert len(tables) == 1 and tables[0] is model.embedding.table
    assert isinstance(tables[0], nn.Embedding) and tables[0].embedding_dim == 4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sparse", [False, True])
def test_sparse_gradients(name, sparse):
    model = _model(name, num_dense=2, sparse=sparse)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    F.binary_cross_entropy_with_logits(model(_ids(5), torch.rand(5, 2)), labels).backward()
    for p in model.embedding_parameters():
        assert p.grad is not None and p.grad.is_sparse == sparse
    for p in model.dense_parameters():
        assert p.grad is not None and not p.grad.is_sparse
    if sparse:  # the sparse gradient touches only the rows in the batch
        rows = model.embedding.global_ids(_ids(5)).unique()
        assert set(model.embedding.table.weight.grad.coalesce().indices()[0].tolist()) == set(rows.tolist())


def test_model_validation():
    for bad in ([], [4, 0], 7):
        with pytest.raises(ValueError, match="field_dims"):
            DeepFM(bad)
    with pytest.raises(ValueError, match="embed_dim"):
        WideAndDeep(DIMS, embed_dim=0)
    with pytest.raises(ValueError, match="mlp_dims"):
        DeepFM(DIMS, mlp_dims=(8, 0))
    with pytest.raises(ValueError, match="num_dense"):
        DeepFM(DIMS, num_dense=-1)
    with pytest.raises(ValueError, match="dropout"):
        DCN(DIMS, dropout=1.0)
    with pytest.raises(ValueError, match="init_std"):
        DCN(DIMS, init_std=-1.0)
    with pytest.raises(ValueError, match="cross_layers"):
        DCNv2(DIMS, cross_layers=-1)
    with pytest.raises(ValueError, match="cross_layers"):
        DCN(DIMS, cross_layers=0, mlp_dims=())
    with pytest.raises(TypeError):
        DeepFM(DIMS, cross_layers=2)  # only the DCNs have a cross network
    with pytest.raises(TypeError):
        CTRModel(DIMS)
    with pytest.raises(ValueError, match=r"model name: 'xdeepfm'.*'dcn', 'dcn_v2', 'deepfm', 'wide_deep'"):
        make_ctr_model("xdeepfm", DIMS)

    with_dense, without = _model("deepfm", num_dense=2), _model("dcn")
    ids = _ids(4)
    with pytest.raises(ValueError, match="dense: None"):
        with_dense(ids)
    for bad in (torch.rand(4, 3), torch.rand(5, 2), torch.ones(4, 2, dtype=torch.long), torch.rand(4)):
        with pytest.raises(ValueError, match="dense"):
            with_dense(ids, bad)
    with pytest.raises(ValueError, match="num_dense = 0"):
        without(ids, torch.rand(4, 2))
    bad_ids = ids.clone()
    bad_ids[2, 3] = 11
    with pytest.raises(ValueError, match="field 3: 11"):
        without(bad_ids)
    with pytest.raises(ValueError, match="ids"):
        without(ids[:, :2])


def test_factory_and_registry():
    assert set(CTR_MODELS) == {"wide_deep", "deepfm", "dcn", "dcn_v2"}
    assert CTR_MODELS["dcn_v2"] is DCNv2 and CTR_MODELS["wide_deep"] is WideAndDeep
    model = make_ctr_model("dcn", DIMS, cross_layers=2, embed_dim=3, mlp_dims=(5,), num_dense=1)
    assert model.cross.weight.shape == (2, len(DIMS) * 3 + 1) and model.mlp[0].out_features == 5
    assert len(make_ctr_model("dcn_v2", DIMS, **TINY).cross.layers) == 3  # the official depth
    default = DeepFM(DIMS)
    assert default.embed_dim == 10 and default.mlp_dims == (400, 400, 400) and default.dropout == 0.0
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm1d)) for m in default.modules())
    assert sum(isinstance(m, nn.Dropout) for m in DeepFM(DIMS, dropout=0.1).modules()) == 3


@pytest.mark.parametrize("name", NAMES)
def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone(name):
    state = torch.get_rng_state()
    a, b, c = _model(name, num_dense=2, seed=3), _model(name, num_dense=2, seed=3), _model(name, num_dense=2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), key
    assert not torch.equal(a.embedding.table.weight, c.embedding.table.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    # reset_parameters with a freshly seeded generator redraws the constructor's weights
    with torch.no_grad():
        for p in c.parameters():
            p.fill_(1.0)
    c.reset_parameters(_gen(3))
    for (key, pa), pc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(pa, pc), key
    # without a generator, the global RNG decides
    torch.manual_seed(11)
    d = make_ctr_model(name, DIMS, **TINY)
    torch.manual_seed(11)
    e = make_ctr_model(name, DIMS, **TINY)
    assert all(torch.equal(p, q) for p, q in zip(d.parameters(), e.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_fits_a_simple_signal(name):
    """A logit made of a per-id effect in field 0, an interaction of fields 1 and 2, and a dense feature."""
    gen = _gen(7)
    dims = (20, 6, 6)
    ids = _ids(1024, dims, seed=8)
    dense = torch.rand(1024, 1, generator=gen)
    effect = torch.randn(20, generator=gen)
    interaction = torch.randn(6, 6, generator=gen)
    logit = 2.0 * effect[ids[:, 0]] + 2.0 * interaction[ids[:, 1], ids[:, 2]] + 3.0 * (dense[:, 0] - 0.5)
    labels = torch.bernoulli(torch.sigmoid(logit), generator=gen)

    model = make_ctr_model(name, dims, embed_dim=4, mlp_dims=(32, 32), num_dense=1, generator=_gen(9))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(40):
        loss = F.binary_cross_entropy_with_logits(model(ids, dense), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    bayes = F.binary_cross_entropy_with_logits(logit, labels).item()
    assert losses[-1] < losses[0] - 0.5 * (losses[0] - bayes), (losses[0], losses[-1], bayes)
