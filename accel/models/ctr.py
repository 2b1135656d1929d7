"""Click-through-rate models for the CowClip chapter: Wide & Deep, DeepFM, DCN and DCN-v2.

The four models of the CowClip paper's experiments, built the way its official code builds them (a vendored copy of
DeepCTR): every categorical field has an embedding row per ID, numeric ("dense") features enter as they are, and the
predicted logit is a sum of parts::

    ids [B, F] (per-field local ids), dense [B, num_dense] (optional)
    logit = linear part                                         every model: bias + sum_f w[id_f] + dense . w_dense
          + W&D      head(mlp(x))                               x = [flattened field embeddings [B, F*d]; dense]
          + DeepFM   fm(e) + head(mlp(x))                       e = field embeddings [B, F, d]
          + DCN      head([cross(x); mlp(x)])                   x_{l+1} = x0 * (x_l . w_l) + b_l + x_l   (w_l a vector)
          + DCN-v2   head([cross_v2(x); mlp(x)])                x_{l+1} = x0 * (W_l x_l + b_l) + x_l     (W_l a matrix)

The linear ("wide") part is in all four models, DCN and DCN-v2 included, as in DeepCTR: its per-ID weights are a
second, 1-dimensional :class:`FieldEmbedding` (``model.linear``). CowClip clips only the d-dimensional table
(``model.embedding``, :meth:`CTRModel.clipped_embeddings`), as the official code does; both tables are "embedding"
parameters for the optimizer split (:meth:`CTRModel.embedding_parameters`), which gives them the fixed embedding
learning rate of the CowClip recipe.

Defaults follow the official recipe: embedding dim 10, MLP 400-400-400 with ReLU (no batch norm, no dropout), 3 cross
layers, embeddings drawn from N(0, 0.01^2). Dense layers are Glorot-normal with zero biases, as DeepCTR initialises
them (Keras truncates that normal; we do not), and the output head has no bias of its own: the single bias is the
linear part's. Differences from the official code: its "DCNv2" is DeepCTR's DCN-Mix (a gated mixture of 4 low-rank
cross layers of rank 32); :class:`DCNv2` here is the full-matrix cross network of the DCN-v2 paper.

Each field's ids are local (0 <= id < field_dims[f]); all fields share one ``nn.Embedding`` of sum(field_dims) rows, and
``offsets`` maps local ids to global rows, so a forward is one gather per table whatever the number of fields. A
training loop that needs the rows a batch touched (CowClip's counts) gets them from ``model.embedding.global_ids(ids)``.

Cost: the MLP dominates. For Criteo (26 fields, d = 10, 13 dense, so x has 273 features) the 400-400-400 MLP is
0.43M multiply-adds per sample forward, the FM term 0.5K, a vector cross layer 0.8K, a DCN-v2 cross layer 75K.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

__all__ = [
    "FieldEmbedding",
    "CrossNetwork",
    "CrossNetworkV2",
    "fm_interaction",
    "CTRModel",
    "WideAndDeep",
    "DeepFM",
    "DCN",
    "DCNv2",
    "CTR_MODELS",
    "make_ctr_model",
]


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= minimum, else a ValueError naming the argument (bools and floats are refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; expected an int >= {minimum}")
    return number


def _check_field_dims(field_dims: Sequence[int]) -> tuple[int, ...]:
    """The vocabulary size of each field as a tuple of positive ints (lists, tuples, numpy arrays, 1-D tensors)."""
    message = f"Invalid field_dims: {field_dims!r}; expected a non-empty sequence of ints >= 1 (one per field)"
    try:
        dims = tuple(operator.index(d) for d in field_dims)
    except TypeError:
        raise ValueError(message) from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(message)
    return dims


def _check_mlp_dims(mlp_dims: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(_int_at_least("mlp_dims entry", d, 1) for d in mlp_dims)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid mlp_dims: {mlp_dims!r}; expected a sequence of ints >= 1 (may be empty)") from None


def _linear(in_features: int, out_features: int, *, bias: bool = True) -> nn.Linear:
    """An nn.Linear whose parameters are left uninitialised (no draw from the global RNG); the model initialises them
    in ``_reset_dense_parameters`` from its generator."""
    return skip_init(nn.Linear, in_features, out_features, bias=bias)


# ------------------------------------------------------------------------------------------------ field embedding


class FieldEmbedding(nn.Module):
    """Embeddings of F categorical fields in one table: ids [B, F] (local per field) -> [B, F, embed_dim].

    Field f owns rows ``offsets[f] .. offsets[f] + field_dims[f] - 1`` of ``table`` (an ``nn.Embedding`` with
    sum(field_dims) rows), so one gather serves every field. ``sparse=True`` makes the table's gradient a sparse tensor
    (only the rows a batch touched; train it with ``torch.optim.SparseAdam`` or SGD, not Adam). Rows are drawn from
    N(0, init_std^2), from ``generator`` when given (else from the global RNG).

    ``check_ids`` (default True) checks every forward that each local id is in its field's range, with a ValueError
    naming the field; the check is one min/max pass over ids and, on a GPU, one device-to-host sync. Turn it off
    (``module.check_ids = False``, or ``check=False`` per call) on a hot path whose ids are known good.
    """

    def __init__(
        self,
        field_dims: Sequence[int],
        embed_dim: int,
        *,
        sparse: bool = False,
        init_std: float = 1e-2,
        check_ids: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.field_dims = _check_field_dims(field_dims)
        self.embed_dim = _int_at_least("embed_dim", embed_dim, 1)
        if not init_std > 0:
            raise ValueError(f"Invalid init_std: {init_std!r}; expected > 0")
        self.init_std = float(init_std)
        self.check_ids = bool(check_ids)
        self.table = skip_init(nn.Embedding, sum(self.field_dims), self.embed_dim, sparse=bool(sparse))
        sizes = torch.tensor(self.field_dims, dtype=torch.int64)
        # Derived from field_dims, so not part of the state dict; they move with .to(device) like parameters.
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)  # [F] first row per field
        self.register_buffer("sizes", sizes, persistent=False)  # [F] vocabulary size per field
        self.reset_parameters(generator)

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)

    @property
    def num_rows(self) -> int:
        return self.table.num_embeddings

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw every row from N(0, init_std^2); ``generator`` must live on the table's device."""
        nn.init.normal_(self.table.weight, 0.0, self.init_std, generator=generator)

    def global_ids(self, ids: torch.Tensor, *, check: bool | None = None) -> torch.Tensor:
        """Local ids [B, F] (int64 or int32, 0 <= ids[:, f] < field_dims[f]) -> rows of ``table`` [B, F] (int64).

        ``check`` overrides ``self.check_ids`` for this call."""
        if ids.dim() != 2 or ids.shape[1] != self.num_fields or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"Invalid ids: {ids.dtype} of shape {tuple(ids.shape)}; expected int64 [B, {self.num_fields}]"
            )
        if (self.check_ids if check is None else check) and ids.numel():
            low, high = torch.aminmax(ids, dim=0)  # [F] each
            bad = (low < 0) | (high >= self.sizes)
            if bad.any():
                field = int(bad.nonzero()[0, 0])
                value = int(low[field]) if low[field] < 0 else int(high[field])
                raise ValueError(
                    f"Invalid id for field {field}: {value}; expected 0 <= id < field_dims[{field}] = "
                    f"{self.field_dims[field]}"
                )
        return ids + self.offsets

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, F] local per-field ids -> embeddings [B, F, embed_dim]."""
        return self.table(self.global_ids(ids))

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, rows={self.num_rows}, embed_dim={self.embed_dim}, sparse={self.table.sparse}"


# ------------------------------------------------------------------------------------------------ interaction parts


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Factorisation-machine second-order term: emb [B, F, d] -> [B], sum over field pairs i < j of <e_i, e_j>.

    Uses sum_{i<j} <e_i, e_j> = 0.5 (||sum_i e_i||^2 - sum_i ||e_i||^2): O(F d) per sample instead of O(F^2 d)."""
    square_of_sum = emb.sum(dim=1).pow(2).sum(dim=1)  # [B]
    sum_of_squares = emb.pow(2).sum(dim=(1, 2))  # [B]
    return 0.5 * (square_of_sum - sum_of_squares)


class CrossNetwork(nn.Module):
    """DCN's cross network (Wang et al., 2017): x0 [B, D] -> [B, D] through ``num_layers`` layers

        x_{l+1} = x0 * (x_l . w_l) + b_l + x_l,        w_l, b_l in R^D

    Each layer adds one degree of explicit feature crossing at 2D parameters. Weights Glorot-normal as a [D, 1] kernel
    (std sqrt(2 / (D + 1))), biases zero."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_layers, dim))  # row l: w_l
        self.bias = nn.Parameter(torch.empty(num_layers, dim))  # row l: b_l

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (self.weight.shape[1] + 1)), generator=generator)
        nn.init.zeros_(self.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias):
            x = torch.addcmul(x + b, x0, (x @ w).unsqueeze(1))  # x + b + x0 * (x . w)
        return x


class CrossNetworkV2(nn.Module):
    """DCN-v2's cross network (Wang et al., 2021), full-rank: x0 [B, D] -> [B, D] through ``num_layers`` layers

        x_{l+1} = x0 * (W_l x_l + b_l) + x_l,          W_l in R^{D x D}, b_l in R^D

    ``layers[l]`` is the ``nn.Linear`` computing W_l x + b_l (Glorot-normal weight, zero bias)."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_linear(dim, dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = torch.addcmul(x, x0, layer(x))  # x + x0 * (W x + b)
        return x


def _mlp(in_dim: int, dims: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout when dropout > 0) for each width in ``dims``: [B, in_dim] -> [B, dims[-1]]."""
    layers: list[nn.Module] = []
    for width in dims:
        layers += [_linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------ the models


class CTRModel(nn.Module):
    """What the four models share: the field embedding, the linear part, input checks, parameter groups, init.

    Subclasses build their deep part and implement :meth:`deep_logit`; ``forward(ids, dense=None) -> logits [B]`` is
    common to all: ``bias + sum_f linear[id_f] + dense . w_dense + deep_logit(embeddings, dense)``. Train with
    ``F.binary_cross_entropy_with_logits(model(ids, dense), labels.float())``.

    Keyword arguments (every model; DCN and DCN-v2 add ``cross_layers=3``):

    * ``field_dims``  vocabulary size of each categorical field (F entries, each >= 1);
    * ``embed_dim``   field embedding width d (10);
    * ``mlp_dims``    hidden widths of the MLP, Linear + ReLU each ((400, 400, 400); () drops the MLP);
    * ``num_dense``   number of numeric features fed beside the ids (0; Criteo has 13);
    * ``sparse``      sparse gradients for both embedding tables (False);
    * ``dropout``     dropout after each MLP activation (0.0, as the official recipe);
    * ``init_std``    std of the embeddings' normal init (1e-2);
    * ``check_ids``   check ids against field_dims every forward (True; see :class:`FieldEmbedding`);
    * ``generator``   a ``torch.Generator`` for the initial weights (None: the global RNG).

    Attributes a training loop uses: ``embedding`` (:class:`FieldEmbedding`, dim ``embed_dim``: the table CowClip
    clips), ``linear`` (:class:`FieldEmbedding`, dim 1: the wide part's per-ID weights), ``linear_dense``
    (``nn.Linear(num_dense, 1, bias=False)``, None without dense features), ``bias`` ([1]); ``name`` (the key in
    :data:`CTR_MODELS`) and ``title`` (for tables and plots).

    Init: ``generator`` (a ``torch.Generator`` on CPU) makes the model's initial weights a function of its seed alone,
    without touching the global RNG; without it they come from the global RNG. The draws go, in order, to the field
    embedding, the linear embedding, then the dense layers in registration order, so ``reset_parameters(g)`` with a
    freshly seeded ``g`` reproduces the constructor's weights.
    """

    name = "ctr"
    title = "CTR model"

    def __init__(
        self,
        field_dims: Sequence[int],
        *,
        embed_dim: int = 10,
        mlp_dims: Sequence[int] = (400, 400, 400),
        num_dense: int = 0,
        sparse: bool = False,
        dropout: float = 0.0,
        init_std: float = 1e-2,
        check_ids: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if type(self) is CTRModel:
            raise TypeError("CTRModel is a base class; build WideAndDeep, DeepFM, DCN or DCNv2 (or make_ctr_model)")
        self.num_dense = _int_at_least("num_dense", num_dense, 0)
        self.mlp_dims = _check_mlp_dims(mlp_dims)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Invalid dropout: {dropout!r}; expected 0 <= dropout < 1")
        self.dropout = float(dropout)
        table = dict(sparse=sparse, init_std=init_std, check_ids=check_ids, generator=generator)
        self.embedding = FieldEmbedding(field_dims, embed_dim, **table)
        # The linear table shares the embedding's offsets; forward checks ids once, through self.embedding.
        self.linear = FieldEmbedding(field_dims, 1, **{**table, "check_ids": False})
        self.linear_dense = _linear(self.num_dense, 1, bias=False) if self.num_dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    # --------------------------------------------------------------------------------------------- shape facts

    @property
    def field_dims(self) -> tuple[int, ...]:
        return self.embedding.field_dims

    @property
    def num_fields(self) -> int:
        return self.embedding.num_fields

    @property
    def embed_dim(self) -> int:
        return self.embedding.embed_dim

    @property
    def deep_input_dim(self) -> int:
        """Width of x = [flattened field embeddings; dense], the input of the MLP and the cross network."""
        return self.num_fields * self.embed_dim + self.num_dense

    # --------------------------------------------------------------------------------------------- forward

    def check_dense(self, dense: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """``dense`` validated against ``num_dense``: a float [B, num_dense] tensor, or None (a [B, 0] tensor counts
        as None) when the model has no dense features. Cast to the embedding's dtype."""
        if self.num_dense == 0:
            if dense is None or (dense.dim() == 2 and dense.shape == (batch_size, 0)):
                return None
            raise ValueError(
                f"Invalid dense: shape {tuple(dense.shape)}; this model has num_dense = 0, so expected None"
            )
        if dense is None:
            raise ValueError(f"Invalid dense: None; expected a float tensor [B, num_dense = {self.num_dense}]")
        if dense.shape != (batch_size, self.num_dense) or not dense.is_floating_point():
            raise ValueError(
                f"Invalid dense: {dense.dtype} of shape {tuple(dense.shape)}; expected a float tensor "
                f"[B = {batch_size}, num_dense = {self.num_dense}]"
            )
        return dense.to(self.embedding.table.weight.dtype)

    def deep_input(self, emb: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        """emb [B, F, d], dense [B, num_dense] or None -> x [B, F*d + num_dense]."""
        x = emb.flatten(1)
        return x if dense is None else torch.cat([x, dense], dim=1)

    def deep_logit(self, emb: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        """The model's own part of the logit, everything but the linear part: emb [B, F, d], dense -> [B]."""
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, F] local per-field ids (int64), dense [B, num_dense] float or None -> logits [B]."""
        rows = self.embedding.global_ids(ids)  # [B, F]; one gather per table below
        dense = self.check_dense(dense, ids.shape[0])
        emb = self.embedding.table(rows)  # [B, F, d]
        logit = self.linear.table(rows).sum(dim=(1, 2)) + self.bias  # [B]
        if dense is not None:
            logit = logit + self.linear_dense(dense).squeeze(1)
        return logit + self.deep_logit(emb, dense)

    # --------------------------------------------------------------------------------------------- parameters

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables' weights: the field embedding and the linear part's 1-dim embedding (the CowClip
        recipe's embedding learning-rate group)."""
        return [self.embedding.table.weight, self.linear.table.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (MLP, cross network, head, dense linear weights, bias): the dense learning-rate group.
        With :meth:`embedding_parameters` it partitions ``parameters()``."""
        embedding = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in embedding]

    def clipped_embeddings(self) -> list[nn.Embedding]:
        """The tables CowClip clips: the embed_dim-dimensional field embedding only (the official code leaves the
        linear part's 1-dim embedding unclipped)."""
        return [self.embedding.table]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise every parameter, drawing from ``generator`` (on the parameters' device) when given."""
        self.embedding.reset_parameters(generator)
        self.linear.reset_parameters(generator)
        self._reset_dense_parameters(generator)

    def _reset_dense_parameters(self, generator: torch.Generator | None) -> None:
        """Glorot-normal weights and zero biases for every dense layer, in registration order; zero global bias."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, CrossNetwork):
                module.reset_parameters(generator)
        nn.init.zeros_(self.bias)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: {"embedding": ..., "dense": ..., "total": ...}."""
        embedding = sum(p.numel() for p in self.embedding_parameters())
        dense = sum(p.numel() for p in self.dense_parameters())
        return {"embedding": embedding, "dense": dense, "total": embedding + dense}

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, fields={self.num_fields}, embed_dim={self.embed_dim}, num_dense={self.num_dense}, "
            f"mlp_dims={self.mlp_dims}"
        )


class WideAndDeep(CTRModel):
    """Wide & Deep (Cheng et al., 2016): logit = linear part + head(mlp(x)), x = [flattened embeddings; dense].

    ``mlp_dims=()`` drops the deep part, leaving logistic regression on the ids and dense features."""

    name = "wide_deep"
    title = "W&D"

    def __init__(self, field_dims: Sequence[int], *, generator: torch.Generator | None = None, **kwargs: Any):
        super().__init__(field_dims, generator=generator, **kwargs)
        if self.mlp_dims:
            self.mlp = _mlp(self.deep_input_dim, self.mlp_dims, self.dropout)
            self.head = _linear(self.mlp_dims[-1], 1, bias=False)
        else:
            self.mlp = self.head = None
        self._reset_dense_parameters(generator)

    def deep_logit(self, emb: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        if self.mlp is None:
            return emb.new_zeros(emb.shape[0])
        return self.head(self.mlp(self.deep_input(emb, dense))).squeeze(1)


class DeepFM(WideAndDeep):
    """DeepFM (Guo et al., 2017): logit = linear part + fm(e) + head(mlp(x)); the FM term and the MLP share the field
    embeddings e [B, F, d]; x = [flattened e; dense]. Dense features enter the linear part and the MLP, not the FM.
    Wide & Deep plus the FM term: the same layers, so the same parameters in the same order.

    ``mlp_dims=()`` drops the deep part, leaving a factorisation machine."""

    name = "deepfm"
    title = "DeepFM"

    def deep_logit(self, emb: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        return fm_interaction(emb) + super().deep_logit(emb, dense)


class _CrossAndDeep(CTRModel):
    """DCN's layout: a cross network and an MLP side by side over x, concatenated into one linear head."""

    cross_type: type[nn.Module] = CrossNetwork

    def __init__(
        self,
        field_dims: Sequence[int],
        *,
        cross_layers: int = 3,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ):
        cross_layers = _int_at_least("cross_layers", cross_layers, 0)  # checked before the tables are allocated
        super().__init__(field_dims, generator=generator, **kwargs)
        self.cross_layers = cross_layers
        if self.cross_layers == 0 and not self.mlp_dims:
            raise ValueError("Invalid cross_layers: 0 with mlp_dims=(); expected a cross network, an MLP or both")
        dim = self.deep_input_dim
        self.cross = self.cross_type(dim, self.cross_layers) if self.cross_layers else None
        self.mlp = _mlp(dim, self.mlp_dims, self.dropout) if self.mlp_dims else None
        head_in = (dim if self.cross is not None else 0) + (self.mlp_dims[-1] if self.mlp_dims else 0)
        self.head = _linear(head_in, 1, bias=False)
        self._reset_dense_parameters(generator)

    def deep_logit(self, emb: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        x = self.deep_input(emb, dense)
        parts = []
        if self.cross is not None:
            parts.append(self.cross(x))
        if self.mlp is not None:
            parts.append(self.mlp(x))
        return self.head(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).squeeze(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cross_layers={self.cross_layers}"


class DCN(_CrossAndDeep):
    """Deep & Cross Network (Wang et al., 2017): logit = linear part + head([cross(x); mlp(x)]), with the vector
    cross layers of :class:`CrossNetwork`. ``cross_layers=0`` or ``mlp_dims=()`` drops that branch (not both)."""

    name = "dcn"
    title = "DCN"
    cross_type = CrossNetwork


class DCNv2(_CrossAndDeep):
    """DCN-v2 (Wang et al., 2021), parallel structure: logit = linear part + head([cross_v2(x); mlp(x)]), with the
    full-matrix cross layers of :class:`CrossNetworkV2` (the official CowClip code runs DeepCTR's low-rank DCN-Mix
    instead). ``cross_layers=0`` or ``mlp_dims=()`` drops that branch (not both)."""

    name = "dcn_v2"
    title = "DCN-v2"
    cross_type = CrossNetworkV2


CTR_MODELS: dict[str, type[CTRModel]] = {cls.name: cls for cls in (WideAndDeep, DeepFM, DCN, DCNv2)}


def make_ctr_model(name: str, field_dims: Sequence[int], **kwargs: Any) -> CTRModel:
    """Build a model by name ("wide_deep", "deepfm", "dcn", "dcn_v2"); ``kwargs`` go to its constructor, e.g.
    ``make_ctr_model("dcn", dims, num_dense=13, cross_layers=3, generator=torch.Generator().manual_seed(0))``."""
    if name not in CTR_MODELS:
        raise ValueError(f"Invalid model name: {name!r}; expected one of {sorted(CTR_MODELS)}")
    return CTR_MODELS[name](field_dims, **kwargs)
