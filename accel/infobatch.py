"""InfoBatch: unbiased dynamic data pruning (Qin et al., ICLR 2024, arXiv 2303.04947), as a Sampler.

The algorithm. Each sample z has a score H(z): its own loss the last time it was trained (1.0 before that; samples
not trained in an epoch keep their old score). At the start of epoch t, with C = num_epochs and r = prune_ratio:

  1. threshold = the mean of H over the whole dataset (no sorting: O(1) work per sample);
  2. D1 = the well-learned samples, H(z) < threshold; every sample with H(z) >= threshold is kept;
  3. exactly int((1 - r) * |D1|) samples of D1 are kept, drawn without replacement, the rest skip this epoch;
  4. the loss of each kept D1 sample is multiplied by 1 / (1 - r), so the epoch's expected gradient
     E[sum over kept z of w(z) * grad L(z)] equals the full-data gradient sum over all z of grad L(z);
  5. the union is shuffled and trained on.

Annealing: from epoch t >= delta * C on, every sample is used with weight 1, which removes what little bias the
pruning leaves before training ends. The first full-data epoch is therefore ceil(delta * C): with C = 10 and
delta = 0.875, epochs 1-8 prune and epochs 9 and later do not. Epoch 0 prunes nothing: all scores start equal, so none
is below the mean.

Four defects of the official code (NUS-HPC-AI-Lab/InfoBatch) that this file avoids, each with a regression test in
tests/test_infobatch.py:
  1. its weights go back to 1 only when delta * C is a whole number (C = 10, delta = 0.875 keeps 1/(1-r) on the
     annealing epochs); here annealing is the real-number test `epoch >= delta * num_epochs`;
  2. it calls np.random.seed(epoch) on the global NumPy generator, silently reseeding the user's randomness; here each
     epoch is drawn by its own torch.Generator seeded from (seed, epoch), and no global random state is touched;
  3. len(loader) is read before the list is rebuilt, so step-based schedules see last epoch's length; here
     set_epoch draws the list, and len(sampler) is right as soon as it returns;
  4. under torch 2.13 an epoch of its single-process sampler never ends. That sampler draws a new list every time
     iter() is called on it and returns itself as the iterator. torch's BatchSampler (drop_last=False, the default)
     cuts each batch with itertools.islice, and islice calls iter() on that iterator again: every batch starts a
     freshly drawn list, so the list never runs out. Here only set_epoch draws. iter() returns a plain iterator over
     the current list (iter() of that iterator is the iterator itself), so calling iter() twice in one epoch yields
     the same list, with no new draw, and an epoch ends after len(sampler) samples.

One difference that stays: the annealing epoch. The official sampler draws a list once in its constructor, so its
draw counter is one ahead of the epoch: epoch e prunes while e + 1 <= delta * C. For a fractional delta * C it is back
to full data at epoch floor(delta * C), one epoch before this file's ceil(delta * C); this file prunes one epoch more
(C = 10, delta = 0.875: the official prunes epochs 1-7, this file epochs 1-8; at r = 0.5 the share of
sample-iterations saved, measured side by side, went from 0.242 to 0.277). When delta * C is whole, both are back to
full data at epoch delta * C.

Resuming: an epoch's list is a pure function of (seed, epoch, the scores at set_epoch), so no generator state needs
saving. state_dict() holds the seed, the epoch, the scores and the current list and weights (for a mid-epoch resume,
when the scores have moved on since the draw); a resumed run then draws the same lists as an uninterrupted one.

Distributed: every rank draws the same global list (same seed, same scores). It is padded to a multiple of
num_replicas by repeating its first entries (as DistributedSampler does without drop_last), and rank k takes
list[k::num_replicas]: every kept sample is trained, fewer than num_replicas of them twice. update() all-gathers the
(index, loss) pairs so that all ranks keep identical scores. With num_replicas > 1 but torch.distributed not
initialised (tests, or ranks that never talk), update() stores only this rank's own losses.

Usage (per-sample losses, reduction="none"; the loader must not shuffle, the sampler does):

>>> import torch, torch.nn.functional as F
>>> from torch import nn
>>> from torch.utils.data import DataLoader, TensorDataset
>>> generator = torch.Generator().manual_seed(0)
>>> inputs, labels = torch.randn(256, 8, generator=generator), torch.randint(0, 3, (256,), generator=generator)
>>> train_set = TensorDataset(inputs, labels)
>>> model = nn.Linear(8, 3)
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> num_epochs = 4
>>> sampler = InfoBatch(len(train_set), num_epochs, prune_ratio=0.5, delta=0.875)
>>> loader = DataLoader(WithIndex(train_set), batch_size=32, sampler=sampler)
>>> for epoch in range(num_epochs):
...     sampler.set_epoch(epoch)
...     for index, x, y in loader:
...         loss = sampler.update(index, F.cross_entropy(model(x), y, reduction="none"))
...         optimizer.zero_grad()
...         loss.backward()
...         optimizer.step()
>>> sampler.history[0]["used"], len(sampler.history)   # epoch 0 uses every sample; epochs 1-3 prune
(256, 4)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def _invalid(name: str, value, expected: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value!r}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# what state_dict() holds, and load_state_dict() needs
_STATE_KEYS = ("num_samples", "num_epochs", "prune_ratio", "delta", "seed", "epoch", "scores", "order", "weights",
               "history")


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) into a well-spread 64-bit seed: no collisions like seed * K + epoch could have.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


def _below_mean(scores: torch.Tensor) -> np.ndarray:
    """[N] bool NumPy array: which scores lie below their mean, in float64 (a constant equals its own mean exactly).

    The mean is torch's float64 mean on the scores' device either way. On the CPU, NumPy widens to float64 and compares
    ~3x faster than torch does on one thread; widening is exact, so the mask is the one torch would give.
    """
    if scores.is_cpu:
        wide = scores.numpy().astype(np.float64)
        return wide < torch.from_numpy(wide).mean().item()
    wide = scores.double()
    return (wide < wide.mean()).cpu().numpy()


class InfoBatch(Sampler[int]):
    """Sampler that prunes well-learned samples each epoch and reweights the rest (see the module docstring).

    num_samples: dataset size N. num_epochs: C, the total epochs of the run (for annealing).
    prune_ratio: r, the fraction of below-mean samples skipped, 0 <= r < 1. delta: annealing starts at delta * C.
    seed: the draws are a function of (seed, epoch, scores). num_replicas, rank: default to torch.distributed's
    world size and rank when it is initialised, else 1 and 0.
    After construction the sampler behaves as if set_epoch(0) had been called (full data).
    """

    def __init__(
        self,
        num_samples: int,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if not _is_int(num_samples) or num_samples < 1:
            raise _invalid("num_samples", num_samples, "an int >= 1")
        if not _is_int(num_epochs) or num_epochs < 1:
            raise _invalid("num_epochs", num_epochs, "an int >= 1")
        if not (isinstance(prune_ratio, numbers.Real) and 0 <= prune_ratio < 1):
            raise _invalid("prune_ratio", prune_ratio, "0 <= prune_ratio < 1")
        if not (isinstance(delta, numbers.Real) and 0 < delta <= 1):
            raise _invalid("delta", delta, "0 < delta <= 1")
        if not _is_int(seed) or seed < 0:
            raise _invalid("seed", seed, "an int >= 0")
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if not _is_int(num_replicas) or num_replicas < 1:
            raise _invalid("num_replicas", num_replicas, "an int >= 1")
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if not _is_int(rank) or not 0 <= rank < num_replicas:
            raise _invalid("rank", rank, f"an int with 0 <= rank < num_replicas = {num_replicas}")
        self.num_samples, self.num_epochs = int(num_samples), int(num_epochs)
        self.prune_ratio, self.delta, self.seed = float(prune_ratio), float(delta), int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.history: list[dict] = []  # one {"epoch", "used", "pruned"} per epoch drawn; "used" excludes padding
        self._scores = torch.ones(self.num_samples)  # [N] float32; moves to the losses' device on update
        self._divisors: dict[tuple, torch.Tensor] = {}  # see _divisor
        self._scaled: tuple[int, torch.Tensor] | None = None  # see _scaled_lookup
        self._epoch = -1
        self.set_epoch(0)

    # ----------------------------------------------------------------------------------------------- the draw

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch `epoch`'s list from the current scores; len() is right at once.

        Calling it again for the current epoch changes nothing (even after updates, or after load_state_dict).
        """
        if not _is_int(epoch) or epoch < 0:
            raise _invalid("epoch", epoch, "an int >= 0")
        epoch = int(epoch)
        if epoch == self._epoch:
            return
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))  # CPU, private to this draw
        # int32 indices: the same permutations as int64 ones (same generator calls), drawn, gathered and read faster.
        index_dtype = torch.int32 if self.num_samples < 2**31 else torch.int64
        table = torch.ones(self.num_samples + 1)  # [N + 1] float32 weights, NaN off the list (see _install)
        table[-1] = math.nan
        if epoch >= self.delta * self.num_epochs or self.prune_ratio == 0:  # annealing: full data, weight 1
            order = torch.randperm(self.num_samples, generator=generator, dtype=index_dtype)
        else:
            below = _below_mean(self._scores)  # [N] bool NumPy array; the one host sync of the draw
            # NumPy's nonzero is ~7x torch's on one thread; both give the ascending positions of the True entries.
            well_learned = torch.from_numpy(np.flatnonzero(below)).to(index_dtype)  # D1
            num_keep = int((1 - self.prune_ratio) * len(well_learned))
            draw = torch.randperm(len(well_learned), generator=generator, dtype=index_dtype)
            kept_below = well_learned.index_select(0, draw[:num_keep])
            kept = torch.cat([torch.from_numpy(np.flatnonzero(~below)).to(index_dtype), kept_below])
            order = kept.index_select(0, torch.randperm(len(kept), generator=generator, dtype=index_dtype))
            table[:-1].masked_fill_(torch.from_numpy(below), math.nan)  # pruned unless drawn just below
            table.index_fill_(0, kept_below.long(), 1 / (1 - self.prune_ratio))
        self._install(epoch, order, table)
        record = {"epoch": epoch, "used": len(order), "pruned": self.num_samples - len(order)}
        self.history = sorted([h for h in self.history if h["epoch"] != epoch] + [record], key=lambda h: h["epoch"])

    def _install(self, epoch: int, order: torch.Tensor, table: torch.Tensor) -> None:
        """Make `order` ([L] int32 or int64, the global list) current and split off this rank's part.

        table: [N + 1] float32 on the CPU, a sample's loss weight if it is in the global list, else NaN; entry N is a
        NaN too. update() reads the same table restricted to this rank's part (the lookup): one gather, with every
        index outside [0, N) clamped onto entry N (-1 wraps to it too), answers "is it a member?" and "what weight?"
        at once, and a NaN poisons the batch's sum.
        """
        total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
        padded = order if total == len(order) else order.repeat(math.ceil(total / len(order)))[:total]  # pad: repeat
        self._epoch, self._order, self._local = epoch, order, padded[self.rank :: self.num_replicas]
        self._table = lookup = table
        self._scaled = None  # see _scaled_lookup
        if self.num_replicas > 1:  # NaN on the other ranks' samples too
            member = torch.zeros(self.num_samples + 1, dtype=torch.bool).index_fill_(0, self._local.long(), True)
            lookup = torch.where(member, table, math.nan)  # sequential: a scattered gather is 10x slower at 10M
        self._lookup = lookup.to(self._scores.device)

    def __iter__(self) -> Iterator[int]:
        return iter(self._local.tolist())

    def __len__(self) -> int:
        return len(self._local)

    # ---------------------------------------------------------------------------------------- weights and scores

    def weights(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Loss weights [B] float32 for indices [B] of this epoch's list: 1/(1-r) on kept below-mean samples, else 1."""
        index = self._as_index(indices, self._lookup.device)
        weight = self._gather(index)
        if not math.isfinite(weight.sum().item()):
            self._explain(index)
        return weight

    def update(self, indices: torch.Tensor | Sequence[int], losses: torch.Tensor) -> torch.Tensor:
        """Store per-sample losses [B] as the scores of indices [B]; return the weighted mean loss (scalar) to backprop.

        The check that indices belong to this epoch's list and that losses are finite costs one host sync, as
        loss.item() would (under torch.distributed, one more to all-gather the ranks' batch sizes). The scores and
        weights move to the losses' device on the first update, so the scatter runs there with no per-sample Python.
        The whole update is four tensor ops (gather, dot, item, scatter) for the usual power-of-two batch size, five
        (a divide after the dot) otherwise, see _scaled_lookup: its cost does not grow with N.
        """
        if not isinstance(losses, torch.Tensor) or losses.ndim != 1 or not losses.is_floating_point():
            is_tensor = isinstance(losses, torch.Tensor)
            got = f"shape {tuple(losses.shape)}, dtype {losses.dtype}" if is_tensor else type(losses).__name__
            raise ValueError(
                f"Invalid losses: expected a 1-D float tensor of per-sample losses (reduction='none'), got {got}"
            )
        device = losses.device
        index = self._as_index(indices, device)
        size = losses.shape[0]
        if index.shape[0] != size:
            raise ValueError(f"Invalid update: {index.shape[0]} indices but {size} losses; expected equal lengths")
        if size == 0:
            raise ValueError("Invalid update: empty batch; expected at least one sample")
        if self._lookup.device != device:
            self._scores, self._lookup, self._scaled = self._scores.to(device), self._lookup.to(device), None
        scaled = self._scaled_lookup(size, losses.dtype)
        weight = self._gather(index, self._lookup if scaled is None else scaled)
        if weight.dtype != losses.dtype:
            weight = weight.to(losses.dtype)
        result = torch.dot(losses, weight)  # the weighted mean if the weights were scaled, else the weighted sum
        # Not finite means a non-member index (NaN weight) or a non-finite loss (weights are positive): one host sync.
        if not math.isfinite(result.item()):
            self._explain(index, losses)
        new_index, new_losses = index, losses.detach()
        if self.num_replicas > 1 and dist.is_available() and dist.is_initialized():
            new_index, new_losses = self._all_gather(index, new_losses)
        if new_losses.dtype != torch.float32:
            new_losses = new_losses.float()
        # put_, not index_copy_: the same writes, a little faster. Every index is a member by now, so none is
        # negative (put_ would wrap it) or out of range.
        self._scores.put_(new_index, new_losses)
        return result if scaled is not None else result / self._divisor(size, result)

    def _scaled_lookup(self, size: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The lookup divided by the batch size, or None to divide the weighted sum instead.

        Gathering the weights from it makes update's dot the weighted mean at once, one op (~3 of update's ~15
        microseconds on CPU) fewer. Dividing by a power of two is exact, so the mean and its gradient have the same
        bits as dividing after the dot, unless a weight or a loss times a weight lies below float32's normal range
        (~1e-38), where the scaled value rounds. Hence only power-of-two sizes with float32 or float64 losses (half
        precision's normal range ends at 6e-5), and one size per epoch: the first such batch's (computing the table
        costs one pass over N, so a later batch of another size divides instead).
        """
        if dtype not in (torch.float32, torch.float64) or size & (size - 1):
            return None
        if self._scaled is None:
            self._scaled = (size, self._lookup / size)
        return self._scaled[1] if self._scaled[0] == size else None

    def _divisor(self, size: int, like: torch.Tensor) -> torch.Tensor | int:
        """`size` as a cached 0-d tensor of like's dtype and device: dividing by it gives the same bits as dividing by
        the int, in half the time of wrapping the int afresh on every call (~2 of update's ~20 microseconds on CPU).
        Half and bfloat16 keep the int: a batch size above 2048 is not exact in half precision."""
        if like.dtype not in (torch.float32, torch.float64):
            return size
        key = (size, like.dtype, like.device)
        divisor = self._divisors.get(key)
        if divisor is None:
            divisor = self._divisors[key] = torch.tensor(float(size), dtype=like.dtype, device=like.device)
        return divisor

    def _gather(self, index: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """[B] float32: each index's loss weight (from the lookup, or `table`), NaN where it is not in this rank's
        list (see _install)."""
        table = self._lookup if table is None else table
        if index.is_cpu:  # index_select raises on any index outside [0, N + 1): no clamp needed
            try:
                return table.index_select(0, index)
            except IndexError:
                pass  # fall through: the clamped gather below gives NaN for those indices, and the caller explains
        return table[index.clamp(-1, self.num_samples)]  # on CUDA an out-of-range gather would be fatal

    def _as_index(self, indices, device: torch.device) -> torch.Tensor:
        index = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
        if index.dtype == torch.long and index.ndim == 1:  # the common case, checked in two attribute reads
            return index if index.device == device else index.to(device)
        if index.ndim != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(
                f"Invalid indices: shape {tuple(index.shape)}, dtype {index.dtype}; "
                f"expected a 1-D tensor or sequence of ints"
            )
        return index.to(device, torch.long)

    def _explain(self, index: torch.Tensor, losses: torch.Tensor | None = None) -> None:
        """Raise the ValueError that says which index or loss failed the fast check (runs only when it failed)."""
        member = torch.isfinite(self._gather(index))
        if not bool(member.all()):
            bad = int(index[(~member).nonzero()[0, 0]])
            raise ValueError(
                f"Index {bad} is not in epoch {self._epoch}'s list for rank {self.rank} of "
                f"{self.num_replicas} (num_samples = {self.num_samples})"
            )
        if losses is not None and not bool(torch.isfinite(losses).all()):
            at = int((~torch.isfinite(losses)).nonzero()[0, 0])
            raise ValueError(f"Non-finite loss {losses[at].item()} for index {int(index[at])}")
        # Every index is a member and every loss finite: the weighted sum overflowed float range. Let it through.

    def _all_gather(self, index: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (index [B_k], loss [B_k]) pairs, concatenated; the B_k may differ between ranks."""
        packed = torch.stack([index.double(), losses.double()])  # [2, B]; indices < 2**53 are exact in float64
        size = torch.tensor([packed.shape[1]], device=packed.device)
        sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        padded = packed.new_zeros(2, max(sizes))
        padded[:, : packed.shape[1]] = packed
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        both = torch.cat([g[:, :s] for g, s in zip(gathered, sizes)], dim=1)
        return both[0].long(), both[1]

    @property
    def scores(self) -> torch.Tensor:
        """[N] float32: each sample's last loss (1.0 if never trained). Read-only: do not modify in place."""
        return self._scores

    # ---------------------------------------------------------------------------------------------- the ledger

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def total_used(self) -> int:
        return sum(h["used"] for h in self.history)

    @property
    def total_pruned(self) -> int:
        return sum(h["pruned"] for h in self.history)

    @property
    def saved_fraction(self) -> float:
        """Sample-iterations skipped over the epochs drawn: total_pruned / (num_samples * epochs)."""
        return self.total_pruned / (self.num_samples * len(self.history))

    # ------------------------------------------------------------------------------------------------ resuming

    def state_dict(self) -> dict:
        """The run's state (CPU tensors, copies): enough for a resumed run to draw the same lists (module docstring)."""
        return {
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "seed": self.seed,
            "epoch": self._epoch,
            "scores": self._scores.cpu().clone(),
            "order": self._order.to(torch.int64, copy=True),
            "weights": self._table[:-1].nan_to_num(1.0),  # 1 off the list
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict(); the run's settings must match. num_replicas and rank may differ (list re-split).

        Everything is checked before anything is set (ValueError naming the field; TypeError if state is no dict):
        a state that fails to load leaves the sampler as it was.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"Invalid state: {type(state).__name__}; expected a dict from InfoBatch.state_dict()")
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise ValueError(f"Invalid state: missing keys {missing}; expected a dict from InfoBatch.state_dict()")
        for key in ("num_samples", "num_epochs", "prune_ratio", "delta", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"Cannot load state with {key} = {state[key]!r} into a sampler with {key} = {getattr(self, key)!r}"
                )
        epoch = state["epoch"]
        if not _is_int(epoch) or epoch < 0:
            raise _invalid("state['epoch']", epoch, "an int >= 0")
        scores = self._checked_per_sample(state, "scores")
        weights = self._checked_per_sample(state, "weights", positive=True)
        order = self._checked_order(state["order"])
        history = state["history"]
        fields = {"epoch", "used", "pruned"}
        if not (isinstance(history, list) and all(isinstance(h, dict) and h.keys() == fields for h in history)):
            raise _invalid("state['history']", history, "a list of {'epoch', 'used', 'pruned'} dicts")

        order = order.long()
        table = torch.full((self.num_samples + 1,), math.nan)
        table[order] = weights.float()[order]
        self._scores = scores.to(self._scores.device, torch.float32, copy=True)
        self._install(int(epoch), order.clone(), table)
        self.history = [dict(h) for h in history]

    def _checked_per_sample(self, state: dict, key: str, positive: bool = False) -> torch.Tensor:
        """state[key] on the CPU, checked to be a float tensor [N] of finite entries (and > 0 if positive)."""
        values, n = state[key], self.num_samples
        if not (isinstance(values, torch.Tensor) and values.shape == (n,) and values.is_floating_point()):
            got = f"shape {tuple(values.shape)}, dtype {values.dtype}" if isinstance(values, torch.Tensor) else values
            raise ValueError(f"Invalid state[{key!r}]: {got}; expected a float tensor of shape ({n},)")
        values = values.cpu()
        valid = values.isfinite() & (values > 0) if positive else values.isfinite()
        if not bool(valid.all()):
            at, allowed = int((~valid).nonzero()[0, 0]), "finite and > 0" if positive else "finite"
            raise ValueError(f"Invalid state[{key!r}]: {values[at].item()} at index {at}; expected {allowed} entries")
        return values

    def _checked_order(self, order) -> torch.Tensor:
        """state['order'] on the CPU, checked to list distinct samples in [0, num_samples), at least one."""
        expected = f"expected distinct sample indices in [0, {self.num_samples - 1}], at least one"
        integers = isinstance(order, torch.Tensor) and not (order.is_floating_point() or order.is_complex())
        if not integers or order.dtype == torch.bool or order.ndim != 1 or order.numel() == 0:
            got = f"shape {tuple(order.shape)}, dtype {order.dtype}" if isinstance(order, torch.Tensor) else order
            raise ValueError(f"Invalid state['order']: {got}; {expected}")
        order = order.cpu()
        low, high = int(order.min()), int(order.max())
        if low < 0 or high >= self.num_samples:
            raise ValueError(f"Invalid state['order']: values in [{low}, {high}]; {expected}")
        distinct = len(torch.unique(order))
        if distinct != len(order):
            raise ValueError(f"Invalid state['order']: {distinct} distinct of {len(order)} entries; {expected}")
        return order


class WithIndex(Dataset):
    """Wrap a map-style dataset so that dataset[i] -> (i, *dataset[i]) (or (i, sample) if the sample is no tuple)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        sample = self.dataset[index]
        return (index, *sample) if isinstance(sample, tuple) else (index, sample)
