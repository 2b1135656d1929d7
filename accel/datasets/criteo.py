"""Real click logs for the CowClip chapter: Criteo Kaggle and Avazu, streamed into memory-mapped arrays.

Both loaders return a :class:`CTRData`: ``train`` / ``test`` (and, for the criteo_x4 split, ``valid``) splits, each
a :class:`CTRSplit` of ``ids`` int32 [N, F] (per-field local ids in ``0 .. field_dims[f] - 1``), ``dense`` float32
[N, D] or None, and ``labels`` float32 [N] (0 or 1), plus ``field_dims``, ``num_dense`` and a ``metadata`` dict (the
cache manifest: rows, malformed lines, preprocessing, vocabulary statistics, source checksum).

* :func:`load_criteo`: the Criteo Display Advertising Challenge (Kaggle, 2014) training file ``train.txt``: 45,840,617
  labelled lines of ``label, I1..I13, C1..C26``, tab-separated, 7 days in time order. I1..I13 are integers (mostly
  counts), C1..C26 are 32-bit hashes written as 8 hex digits; a missing value is an empty field.
* :func:`load_avazu`: the Avazu CTR Prediction (Kaggle, 2014) training file: 40,428,967 lines of CSV after a header
  ``id,click,hour,C1,banner_pos,site_id,...,C21`` (24 columns, 10 days of October 2014, hour = YYMMDDHH).

How a file becomes arrays (the same machinery for both; the first call takes minutes on the full files, a later
call with the same settings opens the cache in milliseconds):

1. The source is a download through :func:`accel.datasets.cache.download` (SHA-256 checked, atomic), a download
   trusted on first use when no checksum is known (Criteo publishes none: the SHA-256 of the first download is
   recorded beside the archive in ``<archive>.sha256`` and checked on every later use), or a file the
   user already has (``path=``): plain text, .gz, .tar.gz / .tar or .zip (the member ``train.txt``, or for Avazu
   ``train`` / ``train.csv`` / ``train.gz``, is found and streamed; nothing is extracted to disk).
2. Parse, streaming: lines are read a few MB at a time and parsed with vectorised NumPy; every line is validated
   (field count, label 0/1, integers, 8 lowercase hex digits) and a malformed line is skipped and recorded with its
   line number (``on_malformed="report"``: a :class:`MalformedLinesWarning` names the first few, the manifest counts
   them per field, ``malformed.tsv`` lists them all) or stops the build with a :class:`CTRFormatError` naming the line
   (``on_malformed="raise"``). Each feature column is appended to its own temporary int64 file (missing =
   :data:`MISSING`), so memory does not grow with the file.
3. Split: a random permutation from ``numpy.random.default_rng(seed)``; the test (and validation) split takes
   ``ceil(fraction * rows)`` rows; rows keep the file's order inside each split (shuffle when batching).
4. Encode, one column at a time (RAM about 4x one column: ~1.5 GB for 45.8M rows): a vocabulary with
   ``np.unique``, ids with ``np.searchsorted``; dense columns min-max scaled.
5. Write each split row-major as ``.npy`` (one sequential pass), hash the files into ``manifest.json``, and move the
   finished folder into place with one rename: a failed build removes its hidden ``.part-*`` folder (a killed one's
   is removed by the next build in the same folder, see :func:`accel.datasets.cache.new_part`), so the cache folder
   is complete or absent, never half-written.

Preprocessing (``preprocessing=``):

* ``"official"``, as in the CowClip code (bytedance/LargeBatchCTR, data_utils.py): categorical missing -> "-1", then
  label-encoded over all rows (scikit-learn's LabelEncoder: the id is the value's rank among the field's distinct
  values in sorted order; no hashing, no minimum count); integer missing -> 0, then min-max scaled to [0, 1] over all
  rows; a random 90/10 train/test split (Avazu: 80/20, all 22 columns categorical, ``id`` dropped, ``hour`` encoded as
  is). Our ids equal LabelEncoder's: hashes are parsed as integers, and for fixed-width lowercase hex the numeric order
  is the string order, with missing (sorted first, like "-1") stored as :data:`MISSING`. The official split was not
  seeded, so our seeded split cannot reproduce its rows, only its recipe.
  ``min_count > 1`` gives the paper's high-frequency-only control: values seen fewer times (over all rows) share one
  out-of-vocabulary id 0, kept values get 1..K in sorted order.
* ``"criteo_x4"`` (Criteo only), the BARS / FuxiCTR Criteo_x4 recipe: every integer feature becomes categorical,
  missing -> 0, then ``floor(ln(x)^2)`` for x > 2 and x itself for x <= 2 (:func:`criteo_x4_bucket`; as in FuxiCTR's
  ``convert_to_bucket`` the buckets share one id space with the small values: 3 and 4 land with 1); categorical
  missing is a value of its own; vocabularies are fit on the training split only, with ``min_count=10``: rarer values
  and values unseen in training map to the field's out-of-vocabulary id 0. Split 8:1:1 (train / valid / test) with
  seed 2018 by default; BARS made its split with scikit-learn 0.19.1's StratifiedKFold, so the rows differ (the sizes
  match: 36,672,493 / 4,584,062 / 4,584,062).

Disk and memory for the full Criteo file: the cache holds int32 ids (4.8 GB), float32 dense (2.4 GB) and labels
(0.2 GB); a build peaks at about 15 GB in the cache folder (int64 columns while parsing; the finished arrays
included), and the archive takes 4.6 GB. Building takes roughly 10 minutes of CPU after the download (extrapolated
from ~9 microseconds per line measured on 1.2M synthetic lines; not run on the full file here).
Arrays open with ``np.load(mmap_mode="c")``: pages are read on first use, so a Colab runtime holds only what training
touches, and writes stay private to the process.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm.auto import tqdm

from . import cache
from .ctr import CTRData, CTRSplit

__all__ = [
    "AVAZU_ROWS",
    "CRITEO_ARCHIVE_BYTES",
    "CRITEO_ROWS",
    "CRITEO_SHA256",
    "CRITEO_URL",
    "MISSING",
    "TRUST_SUFFIX",
    "CTRData",
    "CTRFormatError",
    "CTRSplit",
    "MalformedLinesWarning",
    "criteo_x4_bucket",
    "load_avazu",
    "load_criteo",
]

# Criteo's own link for the Kaggle archive (it redirects to Criteo's Azure storage). The archive holds train.txt,
# test.txt (unlabelled, not used) and readme.txt. Criteo publishes no checksum for it, so none is pinned here: a
# download without sha256= is trusted on first use (see load_criteo) and checked against that hash ever after.
CRITEO_URL = "https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz"
CRITEO_SHA256: str | None = None
CRITEO_ARCHIVE_BYTES = 4_576_820_670  # Content-Length CRITEO_URL reported (2026-08-23); checked on download
CRITEO_ROWS = 45_840_617  # labelled lines of train.txt
AVAZU_ROWS = 40_428_967  # data lines of Avazu's train file
MISSING = int(np.iinfo(np.int64).min)  # a missing value in the parsed int64 columns; sorts before every value
TRUST_SUFFIX = ".sha256"  # the hash recorded at first download sits beside the archive: <archive>.sha256

_FORMAT_VERSION = 1
_CHUNK_BYTES = 8 << 20  # bytes of lines parsed at a time (tests make it small to cross chunk boundaries)
_BLOCK_ROWS = 1 << 18  # rows per step when writing the splits
_MAX_DIGITS = 18  # an integer field has at most this many digits, so it always fits int64
_SPLITS = ("train", "valid", "test")
_TRAIN, _VALID, _TEST = 0, 1, 2
_FIRST_MALFORMED = 20  # malformed lines kept in the manifest (all are in malformed.tsv)


class CTRFormatError(RuntimeError):
    """A click-log file is not in the expected format: an unreadable archive, no data member, a wrong header, no valid
    line, or (with ``on_malformed="raise"``) a malformed line; the message names the file and the line."""


class MalformedLinesWarning(UserWarning):
    """Some lines were skipped as malformed; the message names the first ones, the manifest counts them."""


# ----------------------------------------------------------------------------------------------------- the results


# CTRSplit and CTRData are shared with the synthetic data: accel.datasets.ctr


# ------------------------------------------------------------------------------------------------------ the formats


@dataclass(frozen=True)
class _Format:
    name: str
    title: str
    separator: bytes
    columns: tuple[str, ...]
    kinds: tuple[str, ...]  # per column: "label" | "int" | "hex" | "skip"
    header: bool  # the first line names the columns
    members: tuple[str, ...]  # names of the data file inside an archive
    rows: int  # data lines of the full released file

    @property
    def features(self) -> list[str]:
        return [c for c, k in zip(self.columns, self.kinds) if k in ("int", "hex")]


_CRITEO = _Format(
    name="criteo",
    title="Criteo Kaggle (Display Advertising Challenge)",
    separator=b"\t",
    columns=("label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))),
    kinds=("label", *["int"] * 13, *["hex"] * 26),
    header=False,
    members=("train.txt",),
    rows=CRITEO_ROWS,
)
_AVAZU_HEX = frozenset(
    "site_id site_domain site_category app_id app_domain app_category device_id device_ip device_model".split()
)
_AVAZU_COLUMNS = (
    *"id click hour C1 banner_pos site_id site_domain site_category app_id app_domain app_category".split(),
    *"device_id device_ip device_model device_type device_conn_type".split(),
    *(f"C{i}" for i in range(14, 22)),
)
_AVAZU = _Format(
    name="avazu",
    title="Avazu CTR Prediction",
    separator=b",",
    columns=_AVAZU_COLUMNS,
    kinds=tuple(
        "skip" if c == "id" else "label" if c == "click" else "hex" if c in _AVAZU_HEX else "int"
        for c in _AVAZU_COLUMNS
    ),
    header=True,
    members=("train", "train.csv", "train.gz", "train.csv.gz"),
    rows=AVAZU_ROWS,
)


# ------------------------------------------------------------------------------------------------------- parsing

_HEX_NIBBLE = np.full(256, 255, dtype=np.uint8)  # ASCII byte -> hex digit value, 255 for anything else
_HEX_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_PLACES = 16 ** np.arange(7, -1, -1, dtype=np.int64)
_POW10 = 10 ** np.arange(_MAX_DIGITS, dtype=np.int64)


def _parse_label(u: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = (lengths == 1) & ((u[:, 0] == ord("0")) | (u[:, 0] == ord("1")))
    return valid, (u[:, 0] == ord("1")).astype(np.uint8)


def _parse_int(u: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An optional "-" and 1 to 18 ASCII digits, or empty (missing). Nothing else: no "+", spaces, "1.0" or "1e3"."""
    width = u.shape[1]
    inside = np.arange(width) < lengths[:, None]
    digit = (u >= ord("0")) & (u <= ord("9"))
    minus = u[:, 0] == ord("-")
    char_ok = digit.copy()
    char_ok[:, 0] |= minus
    n_digits = lengths - minus
    valid = (lengths == 0) | (np.where(inside, char_ok, True).all(1) & (n_digits >= 1) & (n_digits <= _MAX_DIGITS))
    place = np.clip(lengths[:, None] - 1 - np.arange(width), 0, _MAX_DIGITS - 1)  # power of ten of each position
    values = (np.where(digit & inside, u.astype(np.int64) - ord("0"), 0) * _POW10[place]).sum(1)
    values = np.where(minus, -values, values)
    return valid, np.where(lengths == 0, MISSING, values)


def _parse_hex(u: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exactly 8 lowercase hex digits (a 32-bit hash, as both datasets write them), or empty (missing)."""
    nibbles = _HEX_NIBBLE[u]
    valid = (lengths == 0) | ((lengths == 8) & (nibbles != 255).all(1))
    packed = (nibbles[:, 0::2] << 4) | (nibbles[:, 1::2] & 15)  # 4 bytes, most significant first
    values = np.ascontiguousarray(packed).view(">u4").reshape(-1).astype(np.int64)
    return valid, np.where(lengths == 0, MISSING, values)


# kind -> (parser, bytes of a field it looks at: longer fields are invalid, and only their length matters)
_PARSERS = {"label": (_parse_label, 1), "int": (_parse_int, _MAX_DIGITS + 1), "hex": (_parse_hex, 8)}


def _shown(field: bytes) -> str:
    text = field.decode("ascii", errors="replace")
    return repr(text if len(text) <= 24 else text[:24] + "...")


def _field_reason(fmt: _Format, column: int, field: bytes) -> str:
    name, kind = fmt.columns[column], fmt.kinds[column]
    if kind == "label":
        return f"{name} must be 0 or 1, got {_shown(field)}"
    if kind == "int":
        return f"{name} is not an integer (an optional '-' and 1-{_MAX_DIGITS} digits): {_shown(field)}"
    return f"{name} is not empty or 8 lowercase hex digits: {_shown(field)}"


def _parse_lines(
    lines: list[bytes], fmt: _Format, first_line: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
    """Lines (as read, with newlines) -> (labels uint8 [n], features int64 [F, n], line numbers int64 [n] of the valid
    rows, malformed [(line number, field or "fields", reason)] in line order).

    Vectorised over the chunk's bytes: separator and newline positions give every field's start and length, and
    each column is gathered into a small fixed-width byte matrix and checked and converted at once; Python touches
    only malformed lines.
    """
    text = b"".join(lines)
    if b"\r" in text:  # tolerate CRLF line ends
        text = text.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    buf = np.frombuffer(text + bytes(_MAX_DIGITS + 1), dtype=np.uint8)  # zero padding: every window fits
    line_end = np.flatnonzero(buf == ord("\n"))  # line i is buf[line_start[i] : line_end[i]]
    line_start = np.concatenate([[0], line_end[:-1] + 1])
    seps = np.flatnonzero(buf == fmt.separator[0])
    first_sep = np.searchsorted(seps, line_start)
    n_fields = np.searchsorted(seps, line_end) - first_sep + 1
    n_columns = len(fmt.columns)
    bad: list[tuple[int, str, str]] = []
    for i in np.flatnonzero(n_fields != n_columns):
        empty = line_end[i] == line_start[i]
        reason = "is empty" if empty else f"has {n_fields[i]} fields, expected {n_columns}"
        bad.append((first_line + int(i), "fields", reason))
    good = np.flatnonzero(n_fields == n_columns)
    n = len(good)
    sep_at = seps[first_sep[good, None] + np.arange(n_columns - 1)]  # [n, columns - 1]
    starts = np.concatenate([line_start[good, None], sep_at + 1], axis=1)  # [n, columns]
    lengths = np.concatenate([sep_at, line_end[good, None]], axis=1) - starts
    labels = np.zeros(n, dtype=np.uint8)
    features = np.empty((len(fmt.features), n), dtype=np.int64)
    valid = np.ones((n, n_columns), dtype=bool)
    for kind, (parse, width) in _PARSERS.items():  # all columns of a kind at once
        columns = [c for c, k in enumerate(fmt.kinds) if k == kind]
        if not columns:
            continue
        length = lengths[:, columns]  # [n, k]
        if kind == "int":  # look at no more bytes than the longest field has
            width = int(min(width, max(1, length.max(initial=1))))
        field_bytes = np.lib.stride_tricks.sliding_window_view(buf, width)[starts[:, columns]]  # [n, k, width]
        field_bytes = np.where(np.arange(width) < length[..., None], field_bytes, 0).astype(np.uint8)
        ok, values = parse(field_bytes.reshape(-1, width), length.reshape(-1))
        valid[:, columns] = ok.reshape(n, len(columns))
        if kind == "label":
            labels = values
        else:
            features[[fmt.features.index(fmt.columns[c]) for c in columns]] = values.reshape(n, len(columns)).T
    row_ok = valid.all(1)
    for i in np.flatnonzero(~row_ok):  # each bad row is reported once, for its first bad field
        c = int(np.argmin(valid[i]))
        field = text[starts[i, c] : starts[i, c] + lengths[i, c]]
        bad.append((first_line + int(good[i]), fmt.columns[c], _field_reason(fmt, c, field)))
    bad.sort()
    return labels[row_ok], features[:, row_ok], first_line + good[row_ok], bad


# -------------------------------------------------------------------------------------------------- the source file


@contextmanager
def _open_data(path: Path, fmt: _Format) -> Iterator[tuple[BinaryIO, str]]:
    """Yield (binary stream of the data file, its description) for plain text, .gz, .tar(.gz) or .zip at ``path``."""
    with ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        magic = raw.read(262)
        raw.seek(0)
        if magic.startswith(b"PK\x03\x04"):
            archive = stack.enter_context(zipfile.ZipFile(raw))
            names = [n for n in archive.namelist() if Path(n).name in fmt.members]
            if not names:
                raise CTRFormatError(
                    f"{path} has no member named {' or '.join(fmt.members)}; it has {archive.namelist()[:8]}"
                )
            stream = stack.enter_context(archive.open(names[0]))
            if names[0].endswith(".gz"):
                stream = stack.enter_context(gzip.GzipFile(fileobj=stream))
            yield stream, f"{path}:{names[0]}"
            return
        is_gzip = magic[:2] == b"\x1f\x8b"
        head = gzip.GzipFile(fileobj=raw).read(262) if is_gzip else magic
        raw.seek(0)
        if head[257:262] == b"ustar":  # a tar archive (POSIX or GNU), compressed or not
            tar = stack.enter_context(tarfile.open(fileobj=raw, mode="r|gz" if is_gzip else "r|"))
            seen = []
            for member in tar:  # a stream: one pass, members in archive order
                if Path(member.name).name in fmt.members and member.isfile():
                    stream = tar.extractfile(member)
                    assert stream is not None  # a regular file always has one
                    yield stream, f"{path}:{member.name}"
                    return
                seen.append(member.name)
            raise CTRFormatError(f"{path} has no member named {' or '.join(fmt.members)}; it has {seen[:8]}")
        if is_gzip:
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw))
            yield stream, str(path)
            return
        yield raw, str(path)


_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile)


def _parse_to_columns(
    path: Path, fmt: _Format, folder: Path, *, max_rows: int | None, on_malformed: str, progress: bool
) -> dict[str, Any]:
    """Pass 1: stream the data file into ``folder``/labels.u8 and one int64 file per feature (feature_<j>.i64);
    malformed lines go to malformed.tsv. Returns counts for the manifest."""
    rows = lines_read = malformed = 0
    where = str(path)
    first_bad: list[list[Any]] = []
    per_field: Counter[str] = Counter()
    with ExitStack() as stack:
        try:
            stream, where = stack.enter_context(_open_data(path, fmt))
            label_file = stack.enter_context(open(folder / "labels.u8", "wb"))
            feature_files = [
                stack.enter_context(open(folder / f"feature_{j}.i64", "wb")) for j in range(len(fmt.features))
            ]
            report = stack.enter_context(open(folder / "malformed.tsv", "w"))
            report.write("line\tfield\treason\n")
            bar = stack.enter_context(
                tqdm(total=max_rows or fmt.rows, unit=" rows", unit_scale=True, desc=fmt.name, disable=not progress)
            )
            first_line = 1
            if fmt.header:
                header = stream.readline().rstrip(b"\r\n")
                expected = fmt.separator.join(c.encode() for c in fmt.columns)
                if header != expected:
                    raise CTRFormatError(
                        f"{where}, line 1: expected the header {expected.decode()!r}, got {_shown(header)}"
                    )
                first_line = 2
            while lines := stream.readlines(_CHUNK_BYTES):
                labels, features, line_numbers, bad = _parse_lines(lines, fmt, first_line)
                first_line += len(lines)
                last_line = first_line - 1
                if max_rows is not None and rows + len(labels) >= max_rows:  # stop after the max_rows-th valid line
                    keep = max_rows - rows
                    labels, features = labels[:keep], features[:, :keep]
                    last_line = int(line_numbers[keep - 1])
                    bad = [b for b in bad if b[0] <= last_line]
                if bad and on_malformed == "raise":
                    line, _, reason = bad[0]
                    raise CTRFormatError(
                        f"{where}, line {line:,}: {reason}. With on_malformed='report' malformed lines are skipped, "
                        f"counted and listed instead."
                    )
                for line, name, reason in bad:
                    report.write(f"{line}\t{name}\t{reason}\n")
                    per_field[name] += 1
                    if len(first_bad) < _FIRST_MALFORMED:
                        first_bad.append([line, reason])
                malformed += len(bad)
                label_file.write(labels.tobytes())
                for j, f in enumerate(feature_files):
                    f.write(features[j].tobytes())
                rows += len(labels)
                lines_read = last_line - (1 if fmt.header else 0)
                bar.update(len(labels))
                if max_rows is not None and rows >= max_rows:
                    break
        except _READ_ERRORS as exc:
            raise CTRFormatError(f"{path} is not a readable file or archive ({type(exc).__name__}: {exc})") from exc
    if rows == 0:
        first = "; ".join(f"line {line}: {reason}" for line, reason in first_bad[:3])
        raise CTRFormatError(
            f"{where}: no valid {fmt.title} line among {lines_read:,} lines" + (f" ({first})" if first else "")
        )
    return {
        "source_member": where,
        "lines_read": lines_read,
        "rows": rows,
        "malformed": {"count": malformed, "by_field": dict(per_field), "first": first_bad},
    }


# --------------------------------------------------------------------------------------------- split and encoding


def _ceil_fraction(fraction: float, n: int) -> int:
    """ceil(fraction * n) without float error (0.1 * 300 is 30, not 31): how scikit-learn sizes a test split."""
    exact = Fraction(fraction).limit_denominator(10**9) * n
    return -(-exact.numerator // exact.denominator)


def _assign_splits(n: int, test_fraction: float, valid_fraction: float, seed: int) -> np.ndarray:
    """uint8 [n]: 0 train, 1 valid, 2 test. A permutation from default_rng(seed); its first ceil(test_fraction * n)
    rows are test, the next ceil(valid_fraction * n) validation, the rest training."""
    n_test, n_valid = _ceil_fraction(test_fraction, n), _ceil_fraction(valid_fraction, n)
    if n_test + n_valid >= n:
        raise CTRFormatError(
            f"only {n} valid rows: too few to split off {n_test} test and {n_valid} validation rows and keep one for "
            f"training"
        )
    order = np.random.default_rng(seed).permutation(n)
    split = np.full(n, _TRAIN, dtype=np.uint8)
    split[order[:n_test]] = _TEST
    split[order[n_test : n_test + n_valid]] = _VALID
    return split


def criteo_x4_bucket(values: np.ndarray) -> np.ndarray:
    """The Criteo_x4 discretisation of integer features: ``floor(ln(x)^2)`` for x > 2, x itself for x <= 2 (0, 1, 2 and
    negative values stay as they are), as in FuxiCTR's ``convert_to_bucket`` (after the winning Kaggle solution).
    The two ranges share one id space: 3 and 4 map to 1, 5..7 to 2. int64 in, int64 out; map missing to 0 first."""
    x = np.asarray(values, dtype=np.int64)
    out = x.copy()
    big = x > 2
    out[big] = np.floor(np.log(x[big].astype(np.float64)) ** 2).astype(np.int64)
    return out


def _encode(column: np.ndarray, fit_rows: np.ndarray | None, min_count: int, oov: bool) -> tuple[np.ndarray, dict]:
    """int64 values [N] -> (int32 ids [N], statistics). The vocabulary is the sorted distinct values of the fit rows
    (all rows when None). Without ``oov`` the id is the value's rank (LabelEncoder); with it, values seen at least
    ``min_count`` times get 1..K in sorted order and all others (rarer, or absent from the fit rows) get 0."""
    values, counts = np.unique(column if fit_rows is None else column[fit_rows], return_counts=True)
    if not oov:
        ids = np.searchsorted(values, column)
        return ids.astype(np.int32), {"dim": len(values), "distinct": len(values)}
    kept = values[counts >= min_count]
    if len(kept) == 0:
        ids = np.zeros(len(column), dtype=np.int64)
    else:
        pos = np.minimum(np.searchsorted(kept, column), len(kept) - 1)
        ids = np.where(kept[pos] == column, pos + 1, 0)
    oov_rows = int(np.count_nonzero(ids == 0))
    return ids.astype(np.int32), {
        "dim": len(kept) + 1,
        "distinct": len(values),
        "kept": len(kept),
        "oov_rows": oov_rows,
    }


def _min_max(column: np.ndarray) -> tuple[np.ndarray, dict]:
    """int64 values [N] with missing -> float32 in [0, 1]: missing -> 0, then (x - min) / (max - min) over all rows
    (all zeros when max == min, as scikit-learn's MinMaxScaler gives)."""
    missing = column == MISSING
    x = np.where(missing, 0, column).astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    scaled = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return scaled.astype(np.float32), {"min": lo, "max": hi, "missing_rows": int(np.count_nonzero(missing))}


@dataclass(frozen=True)
class _Plan:
    """Which parsed features become dense columns and which become categorical fields, and how."""

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    bucket: tuple[str, ...]  # categorical features discretised with criteo_x4_bucket (missing -> 0 first)
    fit_on_train: bool  # vocabularies from the training split only (else all rows)
    min_count: int


def _build(
    path: Path,
    fmt: _Format,
    folder: Path,
    plan: _Plan,
    *,
    max_rows,
    on_malformed,
    test_fraction,
    valid_fraction,
    seed,
    progress,
) -> dict[str, Any]:
    """Parse, split, encode and write the splits into ``folder`` (a fresh temporary folder); returns the manifest."""
    start = time.perf_counter()
    info = _parse_to_columns(path, fmt, folder, max_rows=max_rows, on_malformed=on_malformed, progress=progress)
    n = info["rows"]
    split = _assign_splits(n, test_fraction, valid_fraction, seed)
    feature_file = {name: folder / f"feature_{j}.i64" for j, name in enumerate(fmt.features)}
    oov = plan.fit_on_train or plan.min_count > 1
    field_stats, dense_stats = [], []
    names = [*plan.categorical, *plan.dense]
    for name in tqdm(names, desc="encode", unit=" columns", disable=not progress):
        column = np.fromfile(feature_file[name], dtype=np.int64)
        if name in plan.dense:
            out, stats = _min_max(column)
            out.tofile(folder / f"dense_{name}.f32")
            dense_stats.append({"name": name, **stats})
        else:
            if name in plan.bucket:
                column = criteo_x4_bucket(np.where(column == MISSING, 0, column))
            fit_rows = split == _TRAIN if plan.fit_on_train else None
            ids, stats = _encode(column, fit_rows, plan.min_count, oov)
            ids.tofile(folder / f"ids_{name}.i32")
            field_stats.append({"name": name, **stats})
        del column
        feature_file[name].unlink()
    for leftover in feature_file.values():  # features no plan uses
        leftover.unlink(missing_ok=True)

    # Pass 2: one sequential sweep over the rows, scattering each block into the splits (rows keep the file's order).
    sizes = {s: int(np.count_nonzero(split == code)) for code, s in enumerate(_SPLITS)}
    id_columns = [np.memmap(folder / f"ids_{name}.i32", dtype=np.int32, mode="r") for name in plan.categorical]
    dense_columns = [np.memmap(folder / f"dense_{name}.f32", dtype=np.float32, mode="r") for name in plan.dense]
    labels = np.memmap(folder / "labels.u8", dtype=np.uint8, mode="r")
    outputs: dict[str, list[np.ndarray | None]] = {}
    for s, size in sizes.items():
        if size == 0:
            continue
        ids_out = np.lib.format.open_memmap(folder / f"{s}_ids.npy", "w+", np.int32, (size, len(id_columns)))
        dense_out = (
            np.lib.format.open_memmap(folder / f"{s}_dense.npy", "w+", np.float32, (size, len(dense_columns)))
            if dense_columns
            else None
        )
        labels_out = np.lib.format.open_memmap(folder / f"{s}_labels.npy", "w+", np.float32, (size,))
        outputs[s] = [ids_out, dense_out, labels_out]
    offset = dict.fromkeys(outputs, 0)
    for a in range(0, n, _BLOCK_ROWS):
        b = min(n, a + _BLOCK_ROWS)
        block_ids = np.stack([c[a:b] for c in id_columns], axis=1)
        block_dense = np.stack([c[a:b] for c in dense_columns], axis=1) if dense_columns else None
        block_labels = labels[a:b].astype(np.float32)
        for s, (ids_out, dense_out, labels_out) in outputs.items():
            rows = split[a:b] == _SPLITS.index(s)
            k, o = int(np.count_nonzero(rows)), offset[s]
            ids_out[o : o + k] = block_ids[rows]
            if dense_out is not None:
                dense_out[o : o + k] = block_dense[rows]
            labels_out[o : o + k] = block_labels[rows]
            offset[s] += k
    positive = int(np.count_nonzero(labels))
    for arrays in outputs.values():
        for array in arrays:
            if array is not None:
                array.flush()
    outputs.clear()  # drop every memory map before the temporary files go
    del id_columns, dense_columns, labels
    for name in plan.categorical:
        (folder / f"ids_{name}.i32").unlink()
    for name in plan.dense:
        (folder / f"dense_{name}.f32").unlink()
    (folder / "labels.u8").unlink()

    files = sorted(p.name for p in folder.glob("*.npy"))
    return {
        **info,
        "positive_rate": positive / n,
        "splits": {s: size for s, size in sizes.items() if size},
        "field_names": list(plan.categorical),
        "field_dims": [f["dim"] for f in field_stats],
        "dense_names": list(plan.dense),
        "fields": field_stats,
        "dense": dense_stats,
        "oov_id": 0 if oov else None,
        "files": {p: {"bytes": (folder / p).stat().st_size, "sha256": cache.sha256sum(folder / p)} for p in files},
        "build_seconds": round(time.perf_counter() - start, 3),
    }


# ---------------------------------------------------------------------------------------------------- the cache


def _open_cached(folder: Path, key: dict, verify: bool) -> tuple[CTRData | None, str | None]:
    """(data, None) from a complete cache folder built with ``key``; (None, why) when it is absent or damaged."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return None, None
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != key:
            return None, "it was built with other settings"
        for name, entry in manifest["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return None, f"{name} is missing or has the wrong size"
            if verify and cache.sha256sum(path) != entry["sha256"]:
                return None, f"{name} does not match its SHA-256"
        n_fields, n_dense = len(manifest["field_dims"]), len(manifest["dense_names"])
        splits = {}
        for s, size in manifest["splits"].items():
            ids = np.load(folder / f"{s}_ids.npy", mmap_mode="c")
            dense = np.load(folder / f"{s}_dense.npy", mmap_mode="c") if n_dense else None
            labels = np.load(folder / f"{s}_labels.npy", mmap_mode="c")
            if ids.shape != (size, n_fields) or labels.shape != (size,) or (n_dense and dense.shape != (size, n_dense)):
                return None, f"the {s} arrays do not have the shapes in the manifest"
            splits[s] = CTRSplit(ids=ids, dense=dense, labels=labels)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return None, f"it is unreadable ({type(exc).__name__}: {exc})"
    manifest["folder"] = str(folder)
    return CTRData(
        name=manifest["name"],
        train=splits["train"],
        test=splits["test"],
        valid=splits.get("valid"),
        field_dims=list(manifest["field_dims"]),
        num_dense=n_dense,
        field_names=list(manifest["field_names"]),
        dense_names=list(manifest["dense_names"]),
        metadata=manifest,
    ), None


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished build into place with one rename (replacing a stale or damaged build of ours)."""
    if target.exists():
        shutil.rmtree(target)
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / "manifest.json").is_file():  # not a concurrent builder that got there first
            raise


# ------------------------------------------------------------------------------------- trust on first use (TOFU)

_HASHED: dict[tuple[str, int, int], str] = {}  # (archive, size, mtime_ns) -> sha256 hashed by this process


def _record_path(base: Path, filename: str) -> Path:
    return base / f"{filename}{TRUST_SUFFIX}"


def _read_record(record: Path, filename: str) -> str | None:
    """The sha256 recorded in ``record`` (``sha256sum`` format: ``<64 hex>  <filename>``), or None without one."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)\n?", text)
    if not match or match[2] != filename:
        raise cache.ChecksumError(
            f"{record} does not hold a recorded hash of {filename} (expected one line '<sha256>  {filename}', as "
            f"sha256sum writes it). It was left untouched; delete it to record the archive's hash again."
        )
    return match[1]


def _write_record(record: Path, sha256: str, filename: str) -> None:
    """Write ``record`` atomically (a hidden part, then one rename), in ``sha256sum -c`` format."""
    part = cache.new_part(record.parent, suffix=TRUST_SUFFIX)
    try:
        part.write_text(f"{sha256}  {filename}\n")
        os.replace(part, record)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _hash_of(path: Path) -> str:
    """sha256 of ``path``, hashed once per process while its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = cache.sha256sum(path)
    return _HASHED[key]


def _trusted_archive(
    url: str, base: Path, filename: str, fmt: _Format, expected_bytes: int | None, *, download: bool, progress: bool
) -> tuple[str, str, Path | None]:
    """(sha256, what was checked, the verified archive or None) for a download with no published checksum.

    First use: the archive is downloaded (its size checked against ``expected_bytes`` and the server's
    Content-Length), its SHA-256 is written to ``<archive>.sha256`` beside it, and only then is it moved into place.
    An archive found in the cache without a record is hashed and recorded the same way. Every later use hashes the
    archive again and compares: a mismatch raises :class:`~accel.datasets.cache.ChecksumError` naming the file and
    both hashes, and leaves the file untouched. With a record but no archive, (None) the caller downloads it through
    the checksummed helper with the recorded hash.
    """
    target, record = base / filename, _record_path(base, filename)
    recorded = _read_record(record, filename)
    if recorded is not None:
        if not target.exists():
            return recorded, (f"sha256 {recorded} recorded in {record} at first download (the archive is not in "
                              f"{base}: the cached arrays are used, or a new download is checked against it)"), None
        actual = _hash_of(target)
        if actual != recorded:
            raise cache.ChecksumError(
                f"{target} has sha256 {actual}, but {record} recorded sha256 {recorded} when it was first "
                f"downloaded: the file changed since. It was left untouched. Delete {target} to download it again "
                f"(checked against the recorded hash), or delete {record} to trust the file as it is now."
            )
        return recorded, f"{target}: sha256 {actual} matches the hash recorded in {record} at first download", target
    if target.exists():
        size = target.stat().st_size
        if expected_bytes is not None and size != expected_bytes:
            raise cache.ChecksumError(
                f"{target} has {size:,} bytes, expected {expected_bytes:,} (the size {url} reports): an incomplete "
                f"or different copy. It was left untouched and nothing was recorded; delete it to download it again."
            )
        actual = _hash_of(target)
        _write_record(record, actual, filename)
        return actual, (f"first use of {target} (found there, not downloaded): sha256 {actual} recorded in {record}; "
                        "later runs check it"), target
    if not download:
        size = f" ({expected_bytes:,} bytes)" if expected_bytes else ""
        raise FileNotFoundError(
            f"{fmt.title} archive not found at {target} and download=False. Download {url}{size} and place it there "
            f"(its sha256 is recorded on first use), or pass path= to a copy you have."
        )
    actual = _download_unpinned(url, target, record, expected_bytes, progress)
    return actual, f"first download: sha256 {actual} recorded in {record}; later runs check it", target


def _download_unpinned(url: str, target: Path, record: Path, expected_bytes: int | None, progress: bool,
                       timeout: float = 60.0) -> str:  # fmt: skip
    """Stream ``url`` into a hidden part next to ``target``, check its size, record its sha256 in ``record``, then
    move it into place. Any failure (network, HTTP, a dropped connection, a size mismatch, Ctrl-C) removes the part,
    so ``target`` holds the whole archive or nothing. Raises :class:`~accel.datasets.cache.DownloadError` when the
    server cannot be reached or fails, :class:`~accel.datasets.cache.ChecksumError` when the size is wrong."""
    hint = (f"Download {url} yourself and place it at {target} (its sha256 is recorded on first use), or pass path= "
            "to a copy you have.")
    part = cache.new_part(target.parent)
    try:
        actual, _ = cache.stream_download(url, part, hint=hint, desc=target.name, progress=progress, timeout=timeout,
                                          expected_bytes=expected_bytes)
        _write_record(record, actual, target.name)  # first the record: a later run checks any archive against it
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return actual


# ------------------------------------------------------------------------------------------------- the loaders


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Invalid {name}: {value!r}; expected an int >= {minimum}" + (" or None" if allow_none else "")
        )


def _check_fraction(name: str, value: Any, low_inclusive: bool) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (0 <= value < 1 if low_inclusive else 0 < value < 1)
    )
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r}; expected a number in {'[0, 1)' if low_inclusive else '(0, 1)'}")


def _load(
    fmt: _Format,
    plan: _Plan,
    preprocessing: str,
    *,
    root,
    path,
    url,
    sha256,
    download,
    max_rows,
    on_malformed,
    test_fraction,
    valid_fraction,
    seed,
    progress,
    verify,
    no_url_hint,
    archive_bytes=None,
) -> CTRData:
    cache.check_bool("download", download)
    cache.check_bool("progress", progress)
    cache.check_bool("verify", verify)
    _check_int("max_rows", max_rows, 1, allow_none=True)
    _check_int("seed", seed, 0)
    _check_int("min_count", plan.min_count, 1)
    _check_fraction("test_fraction", test_fraction, low_inclusive=False)
    _check_fraction("valid_fraction", valid_fraction, low_inclusive=True)
    if test_fraction + valid_fraction >= 1:
        raise ValueError(
            f"Invalid test_fraction + valid_fraction: {test_fraction} + {valid_fraction}; expected a sum below 1"
        )
    if on_malformed not in ("report", "raise"):
        raise ValueError(f"Invalid on_malformed: {on_malformed!r}; expected 'report' or 'raise'")
    _check_int("archive_bytes", archive_bytes, 1, allow_none=True)
    if sha256 is not None and (not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ValueError(f"Invalid sha256: {sha256!r}; expected 64 hex digits or None")
    sha256 = sha256.lower() if sha256 else None
    base = Path(root).expanduser() if root is not None else cache.cache_dir()

    checked = None  # how the archive was checked, for a download trusted on first use (said when progress=True)
    source = None
    if path is not None:
        source = Path(path).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"Invalid path: {str(source)!r} is not a file")
        stat = source.stat()
        identity = {"sha256": sha256} if sha256 else {"file": f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"}
    else:
        if url is None:
            raise ValueError(no_url_hint)
        filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        if not filename or urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
            raise ValueError(f"Invalid url: {url!r}; expected an http(s):// or file:// URL that ends in a file name")
        if sha256 is None:  # nothing published to check against: trust on first use (module docstring)
            expected = archive_bytes if archive_bytes is not None else (
                CRITEO_ARCHIVE_BYTES if url == CRITEO_URL else None)
            sha256, checked, source = _trusted_archive(url, base, filename, fmt, expected, download=download,
                                                       progress=progress)
            if progress:
                print(checked, flush=True)
        identity = {"sha256": sha256}
    key = {
        "format_version": _FORMAT_VERSION,
        "dataset": fmt.name,
        "source": identity,
        "preprocessing": preprocessing,
        "min_count": plan.min_count,
        "max_rows": max_rows,
        "seed": seed,
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = base / fmt.name / f"{preprocessing}-{max_rows if max_rows else 'all'}-{digest}"
    data, damage = _open_cached(folder, key, verify)
    if data is not None:
        if checked:
            data.metadata["source_check"] = checked
        return data
    if damage:
        warnings.warn(f"Rebuilding the cache at {folder}: {damage}.", stacklevel=3)

    if path is not None:
        actual = cache.sha256sum(source)
        if sha256 and actual != sha256:
            raise cache.ChecksumError(
                f"{source} has sha256 {actual}, expected {sha256}. It was left untouched; check the file, or pass "
                f"sha256=None to accept it (its hash is then recorded in the manifest)."
            )
        if not sha256:
            warnings.warn(
                f"{source} was not checked against a known checksum; its sha256 is {actual} (recorded in the "
                f"manifest). Pass sha256='{actual}' to pin it.",
                stacklevel=3,
            )
        record = {"path": str(source), "url": None, "sha256": actual}
    else:
        if source is None:  # a pinned sha256, or a recorded one whose archive is not here: the checked download
            if not download and not (base / filename).exists():
                size = f", {CRITEO_ARCHIVE_BYTES:,} bytes" if url == CRITEO_URL else ""
                raise FileNotFoundError(
                    f"{fmt.title} archive not found at {base / filename} and download=False. Download {url} "
                    f"(sha256 {sha256}{size}) and place it there, or pass path= to a copy you have."
                )
            try:
                source = cache.download(url, filename, sha256, root=base, progress=progress)
            except cache.ChecksumError as exc:
                if not checked:
                    raise
                raise cache.ChecksumError(
                    f"{exc} The expected hash is the one recorded in {_record_path(base, filename)} at the first "
                    f"download; if the server's copy changed on purpose, delete that file to trust the new one."
                ) from exc
        record = {"path": None, "url": url, "sha256": sha256}
        if checked:
            record["trust"] = f"first use, recorded in {_record_path(base, filename)}"

    tmp = cache.new_part(folder.parent, directory=True)  # also removes the parts of killed builds
    try:
        manifest = _build(
            source,
            fmt,
            tmp,
            plan,
            max_rows=max_rows,
            on_malformed=on_malformed,
            test_fraction=test_fraction,
            valid_fraction=valid_fraction,
            seed=seed,
            progress=progress,
        )
        manifest = {
            "name": fmt.name,
            "title": fmt.title,
            "preprocessing": preprocessing,
            "min_count": plan.min_count,
            "max_rows": max_rows,
            "seed": seed,
            "test_fraction": test_fraction,
            "valid_fraction": valid_fraction,
            "source": {**record, "member": manifest.pop("source_member")},
            **manifest,
            "key": key,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data, damage = _open_cached(folder, key, verify=False)
    if data is None:
        raise CTRFormatError(f"the cache just built at {folder} cannot be opened: {damage}")
    if checked:
        data.metadata["source_check"] = checked
    bad = manifest["malformed"]
    if bad["count"]:
        first = "; ".join(f"line {line:,}: {reason}" for line, reason in bad["first"][:5])
        warnings.warn(
            f"{fmt.title}: skipped {bad['count']:,} malformed of {manifest['lines_read']:,} lines ({first}"
            f"{'; ...' if bad['count'] > 5 else ''}). All are listed in {folder / 'malformed.tsv'}.",
            MalformedLinesWarning,
            stacklevel=3,
        )
    return data


def load_criteo(
    root: str | os.PathLike[str] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    url: str = CRITEO_URL,
    sha256: str | None = CRITEO_SHA256,
    download: bool = True,
    archive_bytes: int | None = None,
    preprocessing: str = "official",
    max_rows: int | None = None,
    min_count: int | None = None,
    on_malformed: str = "report",
    test_fraction: float = 0.1,
    valid_fraction: float | None = None,
    seed: int = 2018,
    progress: bool = True,
    verify: bool = False,
) -> CTRData:
    """The Criteo Kaggle training file as memory-mapped train / test (/ valid) splits; see the module docstring.

    root: cache folder (default :func:`accel.datasets.cache.cache_dir`): a downloaded archive lands in ``root``, the
        arrays in ``root/criteo/<preprocessing>-<rows>-<key hash>/`` (``manifest.json``, ``malformed.tsv``,
        ``{train,valid,test}_{ids,dense,labels}.npy``).
    path: a copy you already have: ``train.txt``, the Kaggle archive (.tar.gz) or a .gz/.zip of train.txt. It is read
        in place. With ``sha256`` it must match (else :class:`~accel.datasets.cache.ChecksumError`, file untouched);
        without, its SHA-256 is computed at build time, recorded in the manifest and shown in a warning. The cache is
        reused while the file's path, size and modification time stay the same (or, with ``sha256``, the hash).
    url, sha256, download, archive_bytes: without ``path``, the archive is fetched from ``url`` into ``root``.
        With ``sha256`` it goes through the checksummed download helper. Without (the default: Criteo publishes no
        checksum, so :data:`CRITEO_SHA256` is None) it is **trusted on first use**: the first download checks the
        size (``archive_bytes``; default :data:`CRITEO_ARCHIVE_BYTES` for :data:`CRITEO_URL`, and the server's
        Content-Length), records the SHA-256 it computed in ``<archive>.sha256`` beside the archive (``sha256sum -c``
        format) and says so ("first download: sha256 X recorded in F; later runs check it", printed when
        ``progress``); every later call hashes the archive again (once per process) and a mismatch raises
        :class:`~accel.datasets.cache.ChecksumError` naming the file and both hashes, leaving it untouched. A
        failed or interrupted download leaves no file behind; an unreachable server raises
        :class:`~accel.datasets.cache.DownloadError`, a wrong size ``ChecksumError``. ``download=False`` refuses to
        fetch a missing archive. ``metadata["source_check"]`` says how the archive was checked by this call.
    preprocessing: ``"official"`` (CowClip's: 26 label-encoded fields + 13 min-max dense, 90/10 train/test) or
        ``"criteo_x4"`` (39 categorical fields, no dense, train/valid/test 8:1:1, min_count 10 on the training split).
    max_rows: keep only the first ``max_rows`` valid lines (the earliest, since the file is in time order: a prefix,
        not a random sample); None for all 45,840,617.
    min_count: values seen fewer times share the out-of-vocabulary id 0 (default 1 = off for official, 10 for
        criteo_x4; official counts over all rows, criteo_x4 over the training split).
    on_malformed: ``"report"`` (skip, count, warn, list in malformed.tsv) or ``"raise"`` (:class:`CTRFormatError` at
        the first malformed line, naming its line number; nothing is left in the cache).
    test_fraction, valid_fraction: split sizes, ``ceil(fraction * rows)`` each (valid default: 0 for official, 0.1
        for criteo_x4). seed: the split's ``numpy.random.default_rng`` seed.
    progress: tqdm bars while downloading and building. verify: re-hash the cached arrays against the manifest
        (seconds per GB) instead of checking sizes only; a damaged cache is rebuilt, with a warning.

    The first call on the full file takes minutes (download 4.6 GB; build: one streaming parse, one pass per field,
    one write pass) and up to about 15 GB of disk; later calls with the same arguments open the cache at once.
    """
    if preprocessing not in ("official", "criteo_x4"):
        raise ValueError(f"Invalid preprocessing: {preprocessing!r}; expected 'official' or 'criteo_x4'")
    x4 = preprocessing == "criteo_x4"
    ints, hexes = _CRITEO.features[:13], _CRITEO.features[13:]
    plan = _Plan(
        dense=() if x4 else tuple(ints),
        categorical=tuple([*ints, *hexes] if x4 else hexes),
        bucket=tuple(ints) if x4 else (),
        fit_on_train=x4,
        min_count=(10 if x4 else 1) if min_count is None else min_count,
    )
    return _load(
        _CRITEO,
        plan,
        preprocessing,
        root=root,
        path=path,
        url=url,
        sha256=sha256,
        download=download,
        max_rows=max_rows,
        on_malformed=on_malformed,
        test_fraction=test_fraction,
        valid_fraction=(0.1 if x4 else 0.0) if valid_fraction is None else valid_fraction,
        seed=seed,
        progress=progress,
        verify=verify,
        no_url_hint="Invalid url: None; pass url= or path=",
        archive_bytes=archive_bytes,
    )


def load_avazu(
    root: str | os.PathLike[str] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: str | None = None,
    download: bool = True,
    preprocessing: str = "official",
    max_rows: int | None = None,
    min_count: int = 1,
    on_malformed: str = "report",
    test_fraction: float = 0.2,
    seed: int = 2018,
    progress: bool = True,
    verify: bool = False,
) -> CTRData:
    """Avazu's Kaggle training file as memory-mapped train / test splits, CowClip's preprocessing.

    Avazu is distributed only through Kaggle (an account and the competition's rules: ``kaggle competitions download
    -c avazu-ctr-prediction``), so there is no default URL: pass ``path=`` to ``train.gz`` (gzipped CSV), the unzipped
    ``train`` / ``train.csv``, or the competition's .zip; or ``url=`` and ``sha256=`` of a copy you host.

    ``"official"`` preprocessing (the only one): the 22 columns after ``id`` and ``click`` are categorical fields,
    each label-encoded over all rows (sorted distinct values; ``hour`` is kept as YYMMDDHH, 240 values, not split into
    hour of day and weekday); no dense features; a random 80/20 train/test split (``test_fraction=0.2``). Integer
    columns sort numerically, hex columns as their strings, as LabelEncoder does on the frame pandas reads. The other
    arguments are those of :func:`load_criteo`; the cache lives in ``root/avazu/``; line 1 must be the header.
    """
    if preprocessing != "official":
        raise ValueError(f"Invalid preprocessing: {preprocessing!r}; expected 'official'")
    plan = _Plan(dense=(), categorical=tuple(_AVAZU.features), bucket=(), fit_on_train=False, min_count=min_count)
    hint = (
        "Invalid path: None; Avazu has no public download URL. Download train.gz from Kaggle "
        "(https://www.kaggle.com/c/avazu-ctr-prediction, after accepting the competition's rules) and pass "
        "path='train.gz', or pass url= and sha256= of a copy you host."
    )
    return _load(
        _AVAZU,
        plan,
        preprocessing,
        root=root,
        path=path,
        url=url,
        sha256=sha256,
        download=download,
        max_rows=max_rows,
        on_malformed=on_malformed,
        test_fraction=test_fraction,
        valid_fraction=0.0,
        seed=seed,
        progress=progress,
        verify=verify,
        no_url_hint=hint,
    )
