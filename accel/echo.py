"""Data echoing: reuse each fresh example e times when the input pipeline is the bottleneck (Choi et al., 2019,
arXiv 1907.05550), for PyTorch data loaders.

The method. An echo stage is inserted after the slowest part of the input pipeline and repeats every item that
reaches it e times, e >= 1 being the echoing factor. A fractional e repeats each item floor(e) times plus once more
with probability e - floor(e), so that every item is seen e times on average. A shuffle buffer after the echo stage
(n items; for each new item, emit a uniformly random buffered one and put the new one in its place; drain in random
order at the end) spreads the copies of an item apart, so that fewer of them land in the same batch.

The time law. Let t_up be the time the upstream (read, decode, augment) takes to produce one fresh batch and t_down
the time of one training step, with both running in parallel (DataLoader workers vs the training loop). One fresh
batch then feeds e steps, which take max(t_up, e * t_down) in all, so

    steps/s = e / max(t_up, e * t_down),        fresh examples/s = batch_size / max(t_up, e * t_down).

With R = t_up / t_down, every echoed step is free while e <= R: the training loop would otherwise sit idle waiting
for data. An echoed example is worth at most a fresh one, so the speedup in wall clock is at most min(e, R); beyond
e = R extra copies slow the fresh-example rate down, and with R <= 1 there is nothing to hide and echoing cannot pay.
Training time ~ (fresh examples needed / batch_size) * max(t_up, e * t_down): "fresh examples to a target" is the
hardware-independent metric, proportional to time while e <= R.

Three insertion points (the `point` argument of echoing_loader):
  "before_augment"  example echoing before augmentation: read once, augment every copy afresh (copies differ);
  "after_augment"   example echoing after augmentation: read and augment once, echo identical copies;
  "batch"           batch echoing: read and augment once, collate, repeat whole batches (the buffer shuffles batches).
The paper finds before > after > batch in fresh examples saved; batch echoing has the cheapest downstream.
Echoing after the batches reach the accelerator (echo_batches) saves the host-to-device copy as well.

Three entry points:
  echo(items, factor)                        the echo stage (and shuffle buffer) over any iterable, lazily;
  echoing_loader(dataset, batch_size=...)    a DataLoader-style pipeline whose expensive upstream runs in workers;
  echo_batches(batches, factor)              device-side batch echoing: yields the same tensors again, no copy.

How echoing_loader works. An IterableDataset runs inside each DataLoader worker (in the main process when
num_workers = 0). For epoch t, every rank and every worker draws the same permutation of range(len(dataset)) from
(seed, t). Rank r of R (num_replicas; under DistributedDataParallel one rank per process) takes positions r, r + R,
r + 2R, ... of it, and worker k of the rank's K workers takes every K-th of those, starting at the k-th: disjoint
shards whose union is the whole epoch. Nothing is padded or dropped (DistributedSampler pads by repeating examples, or
drops the tail with drop_last): when R does not divide len(dataset), the first len(dataset) % R ranks get one fresh
example more. Each worker reads its samples, applies the echo stage, augmentation where the insertion point puts it,
and its own shuffle buffer, and yields samples that the DataLoader collates into batches in that worker (for "batch",
the worker collates and echoes whole batches itself and the DataLoader passes them on with batch_size=None). The
DataLoader then takes one batch from each worker in turn, skipping workers that have run out: cross-worker mixing is
that round-robin, and the buffer mixes within a worker only. drop_last (like the DataLoader's for iterable datasets)
drops each worker's last partial batch.
Each worker yields (is_fresh, sample) pairs, True for the first copy of a sample, and a collate wrapper turns a
batch of pairs into (fresh count, example count, batch); the main process adds the counts to `fresh_examples` and
`examples` as it hands each batch to the caller, so they count exactly what the training loop received (on this rank).

Ranks' batch counts. A rank's number of batches depends on its shard size, and a fractional factor draws every
rank's copies independently, so ranks can get different numbers of batches in one epoch (with an integer factor they
are equal whenever R divides len(dataset)). Under DDP every rank must run the same number of steps:
wrap the epoch in `with model.join():` (uneven inputs), or stop all ranks at the shortest.

Workers. By default the DataLoader starts its workers at the start of every pass and stops them at its end: for a
slow-to-start pipeline that is the cost echoing is meant to hide. persistent_workers=True keeps them alive from one
pass to the next; set_epoch still reaches them, through a one-element shared-memory tensor that each worker reads
when its next pass begins, and the batches are the same as without persistent workers. worker_init_fn and
prefetch_factor are handed to the DataLoader as they are.

Determinism and randomness. Nothing here touches the global random state of random, numpy or torch. All draws come
from private generators: the permutation from (seed, epoch); the echo counts, the buffer and the generator handed to
augment from (seed, epoch, worker id, and the rank when num_replicas > 1). The same (seed, epoch, num_workers,
num_replicas, rank) gives the same batches, and num_workers = 0 and 1 give the same batches. Like DistributedSampler,
the epoch does not advance by itself: call set_epoch(epoch) before each epoch, or every epoch repeats the first one.

Resuming mid-epoch. Because the batches of an epoch are a deterministic function of those settings (given an augment
that draws from the generator it is given, or none), state_dict() stores only the epoch, the number of batches the
caller has received in the current pass over it, and the counters. load_state_dict() on a fresh loader built with
the same arguments makes its next pass over that epoch skip those batches, so it yields exactly the rest of the
uninterrupted epoch. The cost: the skipped batches are produced again and thrown away (the fresh examples behind them
are read and augmented again, at the full speed of the workers since nothing trains meanwhile). Under DDP each rank
saves and loads its own state.

Usage (ten examples, each trained on twice per epoch):

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> train_set = TensorDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10))
>>> loader = echoing_loader(train_set, batch_size=4, factor=2, point="before_augment", seed=0)
>>> for epoch in range(2):
...     loader.set_epoch(epoch)
...     for x, y in loader:
...         pass                          # the training step
>>> loader.fresh_examples, loader.examples  # upstream reads vs examples trained on
(20, 40)

With augmentation, a shuffle buffer and workers: echoing_loader(train_set, batch_size=128, factor=2,
point="before_augment", augment=augment, shuffle_buffer=1024, num_workers=2, seed=0).

Under DDP (torch.distributed initialised) the same call reads this rank's share of every epoch; add
persistent_workers=True to keep the workers across epochs, and save loader.state_dict() with each rank's checkpoint
(loader.load_state_dict(state) on the restarted rank, then the same loop from the saved epoch).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

POINTS = ("before_augment", "after_augment", "batch")

# ----------------------------------------------------------------------------------------------------- validation


def _invalid(name: str, value, expected: str) -> ValueError:
    return ValueError(f"Invalid {name}: {value!r}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_factor(factor) -> float:
    real = isinstance(factor, numbers.Real) and not isinstance(factor, bool)
    if not (real and math.isfinite(factor) and factor >= 1):
        raise _invalid("factor", factor, "a number >= 1")
    return float(factor)


def _check_int(name: str, value, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise _invalid(name, value, f"an int >= {minimum}")
    return int(value)


def _check_seed(seed, allow_none: bool) -> int | None:
    if seed is None and allow_none:
        return None
    if not _is_int(seed) or seed < 0:
        raise _invalid("seed", seed, "an int >= 0 or None" if allow_none else "an int >= 0")
    return int(seed)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _invalid(name, value, "True or False")
    return bool(value)


def _check_callable(name: str, value) -> None:
    if value is not None and not callable(value):
        raise _invalid(name, value, "a callable or None")


def _check_replicas(num_replicas, rank) -> tuple[int, int]:
    """num_replicas and rank, defaulting to torch.distributed's world size and rank when it is initialised."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    num_replicas = _check_int("num_replicas", num_replicas, 1)
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not _is_int(rank) or not 0 <= rank < num_replicas:
        raise _invalid("rank", rank, f"an int with 0 <= rank < num_replicas = {num_replicas}")
    return num_replicas, int(rank)


# ------------------------------------------------------------------------------------------- the echo stage


def _repeats(items: Iterable, factor: float, rng: np.random.Generator) -> Iterator[tuple[int, object]]:
    """Yield (copy number, item): each item floor(factor) times, once more with probability factor - floor(factor)."""
    whole = math.floor(factor)
    extra = factor - whole
    for item in items:
        count = whole + int(extra > 0 and rng.random() < extra)  # no draw for an integer factor
        for copy in range(count):
            yield copy, item


def _shuffled(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of `size` items (0: pass through); reads one item ahead of each output once full."""
    if size == 0:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:  # filling
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for slot in rng.permutation(len(buffer)):  # drain in random order
        yield buffer[slot]


def echo(items: Iterable, factor: float, *, shuffle_buffer: int = 0, seed: int | None = None) -> Iterator:
    """Repeat each item of `items` floor(factor) times, plus once more with probability factor - floor(factor).

    items: any iterable, infinite ones included; read lazily, one item at a time (with a buffer of n, about
    n / factor + 1 items are read before the first output). Items are yielded as they are (the same objects, no copy).
    shuffle_buffer: 0 yields the copies of an item next to each other; n > 0 passes the echoed stream through a
    shuffle buffer of n items, which spreads copies about n positions apart and keeps the multiset of outputs.
    seed: the echo counts and the buffer draw from a private numpy Generator seeded with it (None: fresh OS entropy).
    Arguments are checked when echo is called, not at the first next().
    """
    factor = _check_factor(factor)
    shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 0)
    seed = _check_seed(seed, allow_none=True)
    source = iter(items)  # fails now, not later, for a non-iterable
    rng = np.random.default_rng(seed)
    return (item for _, item in _shuffled(_repeats(source, factor, rng), shuffle_buffer, rng))


# ------------------------------------------------------------------------------------------ augmentation calls


def _takes_generator(augment: Callable) -> bool:
    """True if augment has two or more named positional parameters: then it is called as augment(x, generator)."""
    target = augment.forward if isinstance(augment, torch.nn.Module) else augment  # Module.__call__ is (*args)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: call with one argument
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) >= 2


def _augmenter(augment: Callable | None, generator: torch.Generator) -> Callable:
    if augment is None:
        return lambda sample: sample
    if _takes_generator(augment):
        return lambda sample: augment(sample, generator)
    return augment


def _seed_sequence(seed: int, epoch: int, *key: int) -> np.random.SeedSequence:
    """Independent random streams, one per key: (0,) the permutation, (1,) the DataLoader, (2, worker, i) workers;
    with num_replicas > 1 the rank is appended to the keys of the last two (a single process keeps its streams)."""
    return np.random.SeedSequence([seed, epoch], spawn_key=key)


def _torch_seed(seed_sequence: np.random.SeedSequence) -> int:
    return int(seed_sequence.generate_state(1, dtype=np.uint64)[0])


# ------------------------------------------------------------------------------------------------- the loader


def _unchanged(batch):
    return batch


# Worker-to-trainer handoff. DataLoader workers hand tensors over in shared memory: the trainer fetches a file
# descriptor per tensor from a helper thread in the worker, and that thread has to win the worker's GIL first, which
# a worker busy decoding in Python holds in 5 ms slices. For small batches this costs the training loop 2-5 ms per
# batch (measured on chapter 02's pipeline), about what the step itself takes, and it is exactly the per-batch
# overhead that echoing is meant to hide. Batches of at most BY_VALUE_BYTES of tensor data therefore travel by value:
# the worker wraps each CPU tensor's numpy view in _ByValue (pickled as bytes through the worker's pipe, in one
# write) and the trainer turns it back into a tensor (no copy). Larger batches keep the shared-memory handoff, which
# wins once a batch no longer fits the pipe's buffer. Nothing is wrapped without workers or with pin_memory.
BY_VALUE_BYTES = 256 * 1024
_NUMPY_DTYPES = {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.uint8, torch.bool, torch.complex64, torch.complex128}


class _ByValue:
    """A CPU tensor in transit from a worker, as a numpy array (pickled by value)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __getstate__(self):
        return self.array

    def __setstate__(self, array):
        self.array = array


def _map_tensors(batch, fn: Callable):
    """batch with fn applied to every tensor or _ByValue in it (through tuples, namedtuples, lists and dicts)."""
    if isinstance(batch, (torch.Tensor, _ByValue)):
        return fn(batch)
    if isinstance(batch, tuple):
        items = [_map_tensors(item, fn) for item in batch]
        return type(batch)._make(items) if hasattr(batch, "_fields") else tuple(items)
    if isinstance(batch, list):
        return [_map_tensors(item, fn) for item in batch]
    if isinstance(batch, dict):
        return {key: _map_tensors(value, fn) for key, value in batch.items()}
    return batch


def _by_value(batch):
    """In a worker: wrap the CPU tensors of a batch of at most BY_VALUE_BYTES of tensor data for the trip by value
    (wrapping is a numpy view, no copy, so a batch found too large afterwards costs nothing to send as it was)."""
    total = 0

    def wrap(tensor: torch.Tensor):
        nonlocal total
        total += tensor.nbytes
        plain = type(tensor) is torch.Tensor and tensor.device.type == "cpu" and not tensor.requires_grad
        return _ByValue(tensor.numpy()) if plain and tensor.dtype in _NUMPY_DTYPES else tensor

    wrapped = _map_tensors(batch, wrap)
    return batch if total > BY_VALUE_BYTES else wrapped


def _from_value(batch):
    """In the trainer: the tensors back from _ByValue wrappers (torch.from_numpy: no copy)."""
    return _map_tensors(batch, lambda item: torch.from_numpy(item.array) if isinstance(item, _ByValue) else item)


class _CountingCollate:
    """Collate a list of (is_fresh, sample) pairs into (fresh count, example count, collated batch).

    A class rather than a closure so that it pickles into worker processes under any start method.
    """

    def __init__(self, collate_fn: Callable, by_value: bool):
        self.collate_fn, self.by_value = collate_fn, by_value

    def __call__(self, pairs: list) -> tuple[int, int, object]:
        batch = self.collate_fn([sample for _, sample in pairs])  # by_value implies this runs in a worker
        return sum(fresh for fresh, _ in pairs), len(pairs), _by_value(batch) if self.by_value else batch


class _EchoStream(IterableDataset):
    """One epoch of one worker's shard: read, echo (augmenting where `point` says), buffer; see the module docstring.

    Yields (is_fresh, sample) for the example points and (fresh count, example count, batch) for "batch".
    """

    def __init__(self, dataset, factor, point, augment, shuffle_buffer, batch_size, drop_last, collate_fn, seed,
                 by_value=False, *, num_replicas=1, rank=0, shared_epoch=False):
        self.dataset, self.factor, self.point, self.augment = dataset, factor, point, augment
        self.shuffle_buffer, self.batch_size, self.drop_last = shuffle_buffer, batch_size, drop_last
        self.collate_fn, self.seed, self.by_value = collate_fn, seed, by_value
        self.num_replicas, self.rank = num_replicas, rank
        self.rank_key = (rank,) if num_replicas > 1 else ()  # appended to the workers' and DataLoader's seed keys
        # Set by EchoingLoader.set_epoch. Workers that are started per pass get a fresh copy of this object, epoch
        # included; persistent workers keep their copy, so the epoch lives in shared memory, read at each pass's start.
        self._epoch = torch.zeros((), dtype=torch.int64)
        if shared_epoch:
            self._epoch.share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def shard(self, worker: int, num_workers: int) -> range:
        """Positions in the epoch's permutation that this rank's worker reads: the rank takes every num_replicas-th
        position from its rank, the worker every num_workers-th of those from its id (disjoint, covering all)."""
        replicas = self.num_replicas
        return range(self.rank + worker * replicas, len(self.dataset), num_workers * replicas)

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, key = self.epoch, self.rank_key
        order = np.random.default_rng(_seed_sequence(self.seed, epoch, 0)).permutation(len(self.dataset))
        positions = self.shard(worker, num_workers)
        shard = order[positions.start :: positions.step].tolist()  # the same order everywhere, disjoint slices
        rng = np.random.default_rng(_seed_sequence(self.seed, epoch, 2, worker, 0, *key))
        generator = torch.Generator().manual_seed(_torch_seed(_seed_sequence(self.seed, epoch, 2, worker, 1, *key)))
        augment = _augmenter(self.augment, generator)
        raw = (self.dataset[index] for index in shard)  # the expensive read happens here, lazily

        if self.point == "before_augment":
            tagged = ((copy == 0, augment(sample)) for copy, sample in _repeats(raw, self.factor, rng))
        elif self.point == "after_augment":
            augmented = (augment(sample) for sample in raw)
            tagged = ((copy == 0, sample) for copy, sample in _repeats(augmented, self.factor, rng))
        else:  # "batch": collate here, echo whole batches
            collated = self._collated(augment(sample) for sample in raw)
            if self.by_value:  # wrapped once per fresh batch; by_value implies this runs in a worker
                collated = ((size, _by_value(batch)) for size, batch in collated)
            batches = _repeats(collated, self.factor, rng)
            tagged = ((size if copy == 0 else 0, size, batch) for copy, (size, batch) in batches)
        return _shuffled(tagged, self.shuffle_buffer, rng)

    def _collated(self, samples: Iterator) -> Iterator[tuple[int, object]]:
        chunk = []
        for sample in samples:
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield len(chunk), self.collate_fn(chunk)
                chunk = []
        if chunk and not self.drop_last:
            yield len(chunk), self.collate_fn(chunk)


class EchoingLoader:
    """Iterable of collated batches, one pass over this rank's fresh examples per iteration (see echoing_loader).

    fresh_examples: examples read from the dataset and received by the caller, summed over all iterations so far.
    examples: examples received in all (fresh + echoed copies). echoed_examples = examples - fresh_examples.
    loader: the underlying torch DataLoader (yields (fresh count, example count, batch) triples).
    """

    def __init__(self, stream: _EchoStream, loader: DataLoader, generator: torch.Generator, num_workers: int):
        self.stream, self.loader, self._generator, self._num_workers = stream, loader, generator, num_workers
        self.fresh_examples = 0
        self.examples = 0
        self._batches = 0  # batches of the current (or last) pass over self.epoch handed to the caller
        self._resume = False  # load_state_dict: the next pass over self.epoch skips its first self._batches batches

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    @property
    def echoed_examples(self) -> int:
        return self.examples - self.fresh_examples

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: the permutation and every draw are functions of (seed, epoch, worker id, rank).

        Setting the epoch that a loaded state_dict was saved in keeps the resume; another epoch starts at its start.
        """
        epoch = _check_int("epoch", epoch, 0)
        if epoch != self.stream.epoch:
            self._batches, self._resume = 0, False
        self.stream.epoch = epoch

    def _settings(self) -> dict:
        """What the batches of an epoch depend on (besides augment and collate_fn): a resume must match all of it."""
        stream = self.stream
        return dict(dataset_size=len(stream.dataset), batch_size=stream.batch_size, factor=stream.factor,
                    point=stream.point, shuffle_buffer=stream.shuffle_buffer, drop_last=stream.drop_last,
                    num_workers=self._num_workers, seed=stream.seed, num_replicas=stream.num_replicas,
                    rank=stream.rank)

    def state_dict(self) -> dict:
        """Where this rank stands: {"epoch", "batches" (received in the current pass over it), "fresh_examples",
        "examples", "settings" (checked by load_state_dict)}; plain Python numbers and strings (torch.save-able)."""
        return dict(epoch=self.epoch, batches=self._batches, fresh_examples=self.fresh_examples,
                    examples=self.examples, settings=self._settings())

    def load_state_dict(self, state: dict) -> None:
        """Resume from state_dict(): restores the epoch and the counters, and the next pass over that epoch skips the
        batches already received, yielding exactly the rest of the uninterrupted epoch (the skipped ones are produced
        again and dropped: see the module docstring). The loader must be built with the same arguments (ValueError
        naming the first one that differs), the same augment and collate_fn (not checked)."""
        saved, mine = state["settings"], self._settings()
        for name, value in mine.items():
            if saved.get(name) != value:
                raise ValueError(f"Cannot resume: the state was saved with {name}={saved.get(name)!r}, "
                                 f"this loader has {name}={value!r}")
        self.stream.epoch = _check_int("epoch", state["epoch"], 0)
        self._batches, self._resume = _check_int("batches", state["batches"], 0), True
        self.fresh_examples, self.examples = int(state["fresh_examples"]), int(state["examples"])

    def __iter__(self) -> Iterator:
        # The DataLoader draws its workers' base seed from this generator (from the global torch RNG without one):
        # reseeding it per epoch keeps the global RNG untouched and worker seeds a function of (seed, epoch).
        key = self.stream.rank_key
        self._generator.manual_seed(_torch_seed(_seed_sequence(self.stream.seed, self.stream.epoch, 1, *key)))
        skip = self._batches if self._resume else 0
        self._batches, self._resume = skip, False
        return self._handed_out(iter(self.loader), skip)

    def _handed_out(self, triples: Iterator, skip: int) -> Iterator:
        for _ in range(skip):  # a resume: these were received before the state was saved
            if next(triples, None) is None:
                return
        by_value = self.stream.by_value
        for fresh, examples, batch in triples:
            self.fresh_examples += int(fresh)
            self.examples += int(examples)
            self._batches += 1
            yield _from_value(batch) if by_value else batch

    def __len__(self) -> int:
        """Batches per epoch on this rank, exact for an integer factor; a fractional factor makes it random: TypeError
        (no len)."""
        stream = self.stream
        if not stream.factor.is_integer():
            raise TypeError(f"len() of an EchoingLoader with a fractional factor ({stream.factor}) is random")
        factor, workers = int(stream.factor), max(self._num_workers, 1)

        def batches(examples: int) -> int:  # one worker's batches from `examples` samples
            return examples // stream.batch_size if stream.drop_last else math.ceil(examples / stream.batch_size)

        total = 0
        for worker in range(workers):
            shard = len(stream.shard(worker, workers))
            total += factor * batches(shard) if stream.point == "batch" else batches(factor * shard)
        return total


def echoing_loader(
    dataset,
    *,
    batch_size: int,
    factor: float,
    point: str,
    augment: Callable | None = None,
    shuffle_buffer: int = 0,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> EchoingLoader:
    """A data loader that echoes each fresh example `factor` times at insertion `point` (see the module docstring).

    dataset: map-style (len(dataset), dataset[i]); dataset[i] is the expensive read and runs in the workers.
    batch_size: examples per batch B; batches are collate_fn(list of samples) (default_collate: x [B, ...], y [B]).
    factor: e >= 1; fractional e echoes floor(e) times plus once with probability e - floor(e).
    point: "before_augment", "after_augment" or "batch".
    augment: applied to one sample as dataset[i] returns it (before collation), in the workers. If it has two or more
    named positional parameters it is called as augment(sample, generator), generator a CPU torch.Generator seeded
    from (seed, epoch, worker id, rank): draw from it and augmentation is reproducible. Otherwise it is called as
    augment(sample) (a torch.nn.Module: judged by its forward), and its randomness is its own business.
    shuffle_buffer: per-worker buffer size, in samples (in batches for "batch"); 0 keeps copies adjacent.
    num_workers, prefetch_factor, pin_memory, persistent_workers, worker_init_fn: as for DataLoader, per rank
    (prefetch_factor and persistent_workers are ignored when num_workers = 0). With persistent_workers the workers
    live across epochs and set_epoch still reaches them; worker_init_fn(worker_id) runs once in each worker as it
    starts (once per pass without persistent_workers).
    seed: the permutation, echo counts, buffer and augment generators derive from (seed, epoch, worker id, rank).
    drop_last: drop each worker's last partial batch.
    num_replicas, rank: the number of processes sharing the data (the DDP world size) and this one's index in
    [0, num_replicas); default to torch.distributed's world size and rank when it is initialised, else 1 and 0. Every
    rank draws the same permutation per (seed, epoch) and reads its own every num_replicas-th fresh example: ranks get
    disjoint fresh examples whose union is the epoch (the first len(dataset) % num_replicas ranks one more).
    Returns an EchoingLoader: iterate it for one epoch, call set_epoch between epochs; it counts fresh_examples and
    examples; len() (this rank's batches) is exact for an integer factor and raises TypeError for a fractional one;
    state_dict() / load_state_dict() resume mid-epoch.
    """
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(f"dataset must be map-style (define __len__ and __getitem__), got {type(dataset).__name__}")
    batch_size = _check_int("batch_size", batch_size, 1)
    factor = _check_factor(factor)
    if point not in POINTS:
        raise _invalid("point", point, "one of " + ", ".join(repr(name) for name in POINTS))
    _check_callable("augment", augment)
    shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 0)
    num_workers = _check_int("num_workers", num_workers, 0)
    seed = _check_seed(seed, allow_none=False)
    _check_callable("collate_fn", collate_fn)
    prefetch_factor = _check_int("prefetch_factor", prefetch_factor, 1)
    drop_last, pin_memory = _check_bool("drop_last", drop_last), _check_bool("pin_memory", pin_memory)
    persistent_workers = _check_bool("persistent_workers", persistent_workers) and num_workers > 0
    _check_callable("worker_init_fn", worker_init_fn)
    num_replicas, rank = _check_replicas(num_replicas, rank)
    collate_fn = collate_fn or default_collate

    by_value = num_workers > 0 and not pin_memory  # see BY_VALUE_BYTES; the stream and collate run in workers then
    stream = _EchoStream(dataset, factor, point, augment, shuffle_buffer, batch_size, drop_last, collate_fn, seed,
                         by_value, num_replicas=num_replicas, rank=rank, shared_epoch=persistent_workers)
    generator = torch.Generator()
    if point == "batch":  # the workers yield finished batches
        batching = dict(batch_size=None, collate_fn=_unchanged)
    else:
        collate = _CountingCollate(collate_fn, by_value)
        batching = dict(batch_size=batch_size, drop_last=drop_last, collate_fn=collate)
    loader = DataLoader(
        stream,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=persistent_workers,
        worker_init_fn=worker_init_fn,
        pin_memory=pin_memory,
        generator=generator,
        **batching,
    )
    return EchoingLoader(stream, loader, generator, num_workers)


# ------------------------------------------------------------------------------------------ device-side echoing


def _device_of(batch) -> torch.device:
    """The device of the first accelerator tensor in a (nested tuple / list / dict) batch; CPU if there is none."""
    if isinstance(batch, torch.Tensor):
        return batch.device
    children = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for child in children:
        device = _device_of(child)
        if device.type != "cpu":
            return device
    return torch.device("cpu")


def echo_batches(
    batches: Iterable, factor: float, *, seed: int | None = None, augment: Callable | None = None
) -> Iterator:
    """Batch echoing on the accelerator: yield each batch floor(factor) times, plus once with the fractional chance.

    batches: any iterable of batches (tensors, or tuples / lists / dicts of them, e.g. x [B, ...] and y [B]) that
    the training loop has already moved to the device. Without augment, every copy is the very same object: nothing
    is copied, nothing is transferred again. With augment, copies after the first are augment(batch, generator)
    (same calling rule as echoing_loader: augment(batch) if it has fewer than two named positional parameters), the
    generator a torch.Generator on the batch's device, seeded from `seed`, so the re-augmentation runs on the device.
    The echo counts are drawn on the host from a private numpy Generator (seed None: fresh OS entropy): no sync.
    """
    factor = _check_factor(factor)
    seed = _check_seed(seed, allow_none=True)
    _check_callable("augment", augment)
    source = iter(batches)
    rng = np.random.default_rng(seed)
    return _echoed_batches(source, factor, rng, augment)


def _echoed_batches(source: Iterator, factor: float, rng: np.random.Generator, augment: Callable | None) -> Iterator:
    with_generator = augment is not None and _takes_generator(augment)
    generators: dict[torch.device, torch.Generator] = {}  # one per device, created on first use
    for copy, batch in _repeats(source, factor, rng):
        if copy == 0 or augment is None:
            yield batch
        elif with_generator:
            device = _device_of(batch)
            if device not in generators:
                generators[device] = torch.Generator(device=device).manual_seed(int(rng.integers(2**63)))
            yield augment(batch, generators[device])
        else:
            yield augment(batch)
