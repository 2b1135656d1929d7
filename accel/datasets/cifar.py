"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009), read straight from the official python archives.

:func:`load_cifar` fetches ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` through
:func:`accel.datasets.cache.download` (SHA-256 checked, atomic, cached), then reads the pickled batches out of the
tar.gz in memory: nothing is extracted to disk. The result is a pair of :class:`CifarSplit` (train, test) holding
uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``; :meth:`CifarSplit.normalized` turns images into float inputs.

:func:`random_crop_flip` is the standard CIFAR augmentation (reflect-pad 4, random 32x32 crop, random horizontal
flip), vectorised over a batch and driven by an explicit ``torch.Generator``, never the global RNG.

Why the checksum matters: the batches are Python pickles, and unpickling untrusted bytes can run arbitrary code. We
only unpickle members of an archive whose SHA-256 matched, and, as a second line of defence, with an unpickler that
accepts nothing but the few NumPy globals an array needs.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.parse
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import cache

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CifarFormatError",
    "CifarSpec",
    "CifarSplit",
    "load_cifar",
    "normalize",
    "random_crop_flip",
]


@dataclass(frozen=True)
class CifarSpec:
    """Where an official CIFAR archive lives and how it is laid out."""

    name: str  # "cifar10" | "cifar100"
    title: str  # for messages
    url: str
    sha256: str
    size: int  # bytes of the official archive
    folder: str  # top-level folder inside the archive
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str
    label_key: bytes  # in each batch dict
    names_key: bytes  # in the meta dict
    num_classes: int
    # Per-channel mean and standard deviation of all training pixels scaled to [0, 1] (every pixel of the 50,000
    # training images counts once; population std). The (0.2023, 0.1994, 0.2010) found in many CIFAR-10 scripts is a
    # different statistic and is not used here.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    size=170_498_071,
    folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_members=("test_batch",),
    meta_member="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    size=169_001_437,
    folder="cifar-100-python",
    train_members=("train",),
    test_members=("test",),
    meta_member="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)

_SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}
_PIXELS = 3 * 32 * 32


class CifarFormatError(RuntimeError):
    """The archive's checksum was accepted, but its contents are not in the CIFAR python format."""


@dataclass(frozen=True)
class CifarSplit:
    """One split of CIFAR: ``images`` uint8 [N, 3, 32, 32] (RGB, 0..255), ``labels`` int64 [N] in [0, num_classes).

    ``classes[k]`` names label ``k`` (CIFAR-100: the 100 fine labels). ``name`` is ``"cifar10"`` or ``"cifar100"``
    and picks the normalisation constants.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return self.labels.shape[0]

    def normalized(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
        """float32 [N, 3, 32, 32]: ``(images / 255 - mean) / std`` per channel.

        ``mean`` and ``std`` default to the training-set statistics of this dataset (:data:`CIFAR10`.mean/.std,
        :data:`CIFAR100`.mean/.std), so train and test are normalised with the same constants. The whole CIFAR
        training set in float32 takes 614 MB; for less memory, keep uint8 and call :func:`normalize` per batch.
        """
        spec = _SPECS[self.name]
        return normalize(self.images, spec.mean if mean is None else mean, spec.std if std is None else std)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel of these images scaled to [0, 1]; on the full training set these give the
        constants in :data:`CIFAR10` / :data:`CIFAR100` (rounded to 4 digits)."""
        x = self.images.to(torch.float64).div_(255).transpose(0, 1).reshape(3, -1)
        return tuple(x.mean(dim=1).tolist()), tuple(x.std(dim=1, unbiased=False).tolist())

    def dataset(self) -> TensorDataset:
        """A ``TensorDataset`` of (uint8 image [3, 32, 32], int64 label) pairs."""
        return TensorDataset(self.images, self.labels)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``images`` [..., 3, H, W] (uint8 0..255, or float in [0, 1]) -> float ``(x - mean) / std`` per channel.

    uint8 input becomes float32; float input keeps its dtype. Works on any device.
    """
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"Invalid images shape: {tuple(images.shape)}; expected [..., 3, H, W]")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"Invalid mean/std: {tuple(mean)!r}, {tuple(std)!r}; expected 3 values each")
    if min(std) <= 0:
        raise ValueError(f"Invalid std: {tuple(std)!r}; expected positive values")
    x = images.float().div_(255) if images.dtype == torch.uint8 else images
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def load_cifar(
    name: str = "cifar10",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> tuple[CifarSplit, CifarSplit]:
    """(train, test) splits of CIFAR-10 (50,000 / 10,000 images) or CIFAR-100 (50,000 / 10,000, fine labels).

    name: ``"cifar10"`` or ``"cifar100"``.
    root: folder for the archive (default: the accel data cache, ``$ACCEL_DATA_DIR`` or ``data/cache``).
    download: fetch the archive when it is missing; with ``False``, a missing archive raises ``FileNotFoundError``
        saying where to put it. A present archive is SHA-256 checked either way.
    url, sha256: another source for the archive (a mirror, or a test fixture). The cached file takes the URL's file
        name; ``sha256`` defaults to the official archive's, so a mirror needs only ``url``.

    Raises :class:`~accel.datasets.cache.ChecksumError` (wrong SHA-256; a bad download leaves no file),
    :class:`~accel.datasets.cache.DownloadError` (network) and :class:`CifarFormatError` (an archive whose contents
    are not CIFAR batches). Reading the official archive takes a few seconds (gunzip of 170 MB).
    """
    if name not in _SPECS:
        raise ValueError(f"Invalid name: {name!r}; allowed: {tuple(_SPECS)}")
    cache.check_bool("download", download)
    cache.check_bool("progress", progress)
    spec = _SPECS[name]
    source = spec.url if url is None else url
    checksum = spec.sha256 if sha256 is None else sha256
    filename = urllib.parse.unquote(urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1])
    if not filename:
        raise ValueError(f"Invalid url: {source!r}; expected a URL that ends in a file name")

    folder = Path(root).expanduser() if root is not None else cache.cache_dir()
    target = folder / filename
    if not download and not target.exists():
        size = f", {spec.size:,} bytes" if source == spec.url else ""
        raise FileNotFoundError(
            f"{spec.title} archive not found at {target} and download=False. Download {source} "
            f"(sha256 {checksum}{size}) and place it there, or call load_cifar({name!r}, download=True)."
        )
    # With download=False the file exists here, so cache.download only verifies its checksum.
    path = cache.download(source, filename, checksum, root=folder, progress=progress)
    return _read_archive(path, spec)


# ----------------------------------------------------------------------------------------------- reading the archive

# The only globals a CIFAR pickle needs: NumPy's array reconstruction (old and new module paths), and _codecs.encode,
# which Python 3 protocol-2 pickles use for bytes. Anything else (os.system, ...) is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure to unpickle means a malformed member
        raise CifarFormatError(f"{where} is not a readable pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise CifarFormatError(f"{where} holds a {type(obj).__name__}, expected a dict")
    return obj


def _get(d: dict, key: bytes, where: str):
    """d[key], accepting str keys too (an archive re-pickled by Python 3 without encoding="bytes")."""
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    raise CifarFormatError(f"{where} has no key {key!r}; it has {sorted(map(repr, d))}")


def _read_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the ``wanted`` members, in one sequential pass over the tar.gz."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if member.name in wanted:
                    if not member.isfile():
                        raise CifarFormatError(f"{path}: member {member.name!r} is not a regular file")
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has one
                    found[member.name] = handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CifarFormatError(f"{path} is not a readable tar.gz archive ({type(exc).__name__}: {exc})") from exc
    missing = sorted(wanted - found.keys())
    if missing:
        raise CifarFormatError(f"{path} is not a CIFAR python archive: missing member(s) {missing}")
    return found


def _parse_batch(obj: dict, where: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    data = _get(obj, b"data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        desc = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise CifarFormatError(f"{where}: 'data' must be a uint8 array of shape [N, {_PIXELS}], got {desc}")
    raw_labels = _get(obj, label_key, where)
    try:
        labels = np.asarray(raw_labels)
    except (ValueError, TypeError) as exc:
        raise CifarFormatError(f"{where}: {label_key!r} is not a list of integers") from exc
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != data.shape[0]:
        raise CifarFormatError(
            f"{where}: {label_key!r} must be {data.shape[0]} integers (one per image), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    # Each row is 1024 red, 1024 green, 1024 blue values, each channel a row-major 32x32 image.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _parse_names(obj: dict, where: str, spec: CifarSpec) -> list[str]:
    names = _get(obj, spec.names_key, where)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        count = len(names) if isinstance(names, (list, tuple)) else type(names).__name__
        raise CifarFormatError(f"{where}: {spec.names_key!r} must list {spec.num_classes} class names, got {count}")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as exc:
        raise CifarFormatError(f"{where}: class names are not UTF-8") from exc


def _read_archive(path: Path, spec: CifarSpec) -> tuple[CifarSplit, CifarSplit]:
    def member(short: str) -> str:
        return f"{spec.folder}/{short}"

    names = [member(m) for m in (*spec.train_members, *spec.test_members, spec.meta_member)]
    raw = _read_members(path, set(names))
    meta = member(spec.meta_member)
    classes = _parse_names(_unpickle(raw.pop(meta), meta), meta, spec)

    def split(shorts: tuple[str, ...]) -> CifarSplit:
        images, labels = [], []
        for short in shorts:
            where = member(short)
            x, y = _parse_batch(_unpickle(raw.pop(where), where), where, spec.label_key)
            if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
                raise CifarFormatError(
                    f"{where}: labels must lie in [0, {spec.num_classes}), got min {y.min()} and max {y.max()}"
                )
            images.append(x)
            labels.append(y)
        return CifarSplit(
            images=torch.from_numpy(np.concatenate(images)),
            labels=torch.from_numpy(np.concatenate(labels)),
            classes=list(classes),
            name=spec.name,
        )

    return split(spec.train_members), split(spec.test_members)


# ------------------------------------------------------------------------------------------------------ augmentation


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size + 1, 2 * size - 2] into [0, size) the way ``F.pad(mode="reflect")`` does."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation: reflect-pad by ``padding``, crop back to H x W at a random offset, then flip
    horizontally with probability 0.5; each image of the batch draws its own offset and flip.

    x: [B, C, H, W], any dtype (uint8 before normalising, or float after), any device. Returns a new tensor of the
    same shape, dtype and device. ``padding`` must be smaller than H and W (reflection needs that many pixels).

    Randomness comes only from ``generator`` (on the CPU or on x's device): per call it draws, in this order, B row
    offsets and B column offsets in [0, 2 * padding] (one ``randint`` of shape [2, B]), then B flips (``randint`` of
    shape [B]), so the same generator state gives the same batch. The global RNG is never touched.

    Vectorised: no padded copy is made; each output pixel is gathered from the input through reflected row and column
    indices ([B, H] and [B, W]), i.e. two ``gather`` calls over the whole batch.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"Invalid generator: {generator!r}; expected a torch.Generator (the global RNG is not used)")
    if x.dim() != 4:
        raise ValueError(f"Invalid x shape: {tuple(x.shape)}; expected [B, C, H, W]")
    b, c, h, w = x.shape
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding < min(h, w):
        raise ValueError(f"Invalid padding: {padding!r}; expected an int with 0 <= padding < min(H, W) = {min(h, w)}")

    offsets = torch.randint(2 * padding + 1, (2, b), generator=generator, device=generator.device).to(x.device)
    flips = torch.randint(2, (b,), generator=generator, device=generator.device).to(x.device, torch.bool)

    # Output pixel (i, j) of image n comes from padded pixel (oy[n] + i, ox[n] + j'), j' = j or W-1-j if flipped,
    # i.e. from input pixel (reflect(oy[n] + i - padding), reflect(ox[n] + j' - padding)).
    row_range = torch.arange(h, device=x.device)
    col_range = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], w - 1 - col_range, col_range)  # [B, W]
    rows = _reflect(offsets[0, :, None] + row_range - padding, h)  # [B, H]
    cols = _reflect(offsets[1, :, None] + cols - padding, w)  # [B, W]
    out = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
