"""Tests for accel.datasets.criteo against the mini fixtures in data/fixtures (criteo_mini.tar.gz, avazu_mini.csv).

The expected arrays come from a small pure-Python reference that follows the documented recipes literally (split the
text, fill missing values, sort distinct strings the way scikit-learn's LabelEncoder does, min-max in float64), so
the vectorised loader is checked against the recipe, not against itself.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import tarfile
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _parts import killed_parts, start_part_owner, stop  # tests/_parts.py
from _serve import closed_port_url, serve  # tests/_serve.py

from accel.datasets import criteo
from accel.datasets.cache import ChecksumError, DownloadError
from accel.datasets.criteo import (
    CRITEO_ARCHIVE_BYTES,
    CRITEO_URL,
    MISSING,
    CTRFormatError,
    MalformedLinesWarning,
    criteo_x4_bucket,
    load_avazu,
    load_criteo,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_ctr_fixtures", FIXTURES / "make_ctr_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _load_fixture_script()
ARCHIVE = FIXTURES / fx.CRITEO_MINI_FILE
AVAZU = FIXTURES / fx.AVAZU_MINI_FILE
CRITEO_VALID_ROWS = fx.CRITEO_LINES - len(fx.CRITEO_MALFORMED)  # 293
AVAZU_VALID_ROWS = fx.AVAZU_LINES - len(fx.AVAZU_MALFORMED)  # 196


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _criteo(root: Path, **kwargs) -> criteo.CTRData:
    """The committed archive through the download path (file:// URL + its SHA-256), malformed-line warning muted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedLinesWarning)
        return load_criteo(root, url=ARCHIVE.as_uri(), sha256=_sha(ARCHIVE.read_bytes()), progress=False, **kwargs)


def _from_path(root: Path, path: Path, loader=load_criteo, **kwargs) -> criteo.CTRData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the malformed lines and the unverified-file warning
        return loader(root, path=path, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------- the reference


def _split_codes(n: int, seed: int, test_fraction: float, valid_fraction: float) -> np.ndarray:
    n_test, n_valid = math.ceil(round(test_fraction * n, 9)), math.ceil(round(valid_fraction * n, 9))
    order = np.random.default_rng(seed).permutation(n)
    codes = np.zeros(n, dtype=int)
    codes[order[:n_test]] = 2
    codes[order[n_test : n_test + n_valid]] = 1
    return codes


def _label_encode(values: list, fit: list[bool], min_count: int, oov: bool) -> tuple[list[int], int]:
    counts = Counter(v for v, f in zip(values, fit) if f)
    if not oov:
        vocab = {v: i for i, v in enumerate(sorted(counts))}
        return [vocab[v] for v in values], len(vocab)
    vocab = {v: i + 1 for i, v in enumerate(sorted(v for v, c in counts.items() if c >= min_count))}
    return [vocab.get(v, 0) for v in values], len(vocab) + 1


def _bucket(v: int) -> int:
    return math.floor(math.log(v) ** 2) if v > 2 else v


def _reference(rows, *, label, ints, hexes, dense, seed, test_fraction, valid_fraction, min_count, x4=False):
    """rows: lists of strings. ints/hexes: column indices of categorical fields; dense: column indices min-maxed."""
    n = len(rows)
    codes = _split_codes(n, seed, test_fraction, valid_fraction)
    fit = [c == 0 for c in codes] if x4 else [True] * n
    oov = x4 or min_count > 1
    ids, dims = [], []
    for c in ints:  # integer categories sort as numbers
        if x4:
            values = [_bucket(int(r[c]) if r[c] else 0) for r in rows]
        else:
            values = [int(r[c]) if r[c] else -(2**63) for r in rows]
        column, dim = _label_encode(values, fit, min_count, oov)
        ids.append(column)
        dims.append(dim)
    for c in hexes:  # hashes sort as strings; missing is "-1" (official) or "" (x4), both sorting first
        values = [r[c] if r[c] else ("" if x4 else "-1") for r in rows]
        column, dim = _label_encode(values, fit, min_count, oov)
        ids.append(column)
        dims.append(dim)
    scaled = []
    for c in dense:
        x = [float(r[c]) if r[c] else 0.0 for r in rows]
        lo, hi = min(x), max(x)
        scaled.append([(v - lo) / (hi - lo) for v in x])
    ids_matrix = np.array(ids, dtype=np.int64).T
    dense_matrix = np.array(scaled, dtype=np.float64).T if dense else None
    labels = np.array([float(r[label]) for r in rows])
    out = {}
    for code, split in enumerate(["train", "valid", "test"]):
        keep = codes == code
        if keep.any():
            out[split] = (ids_matrix[keep], None if dense_matrix is None else dense_matrix[keep], labels[keep])
    return out, dims


def _criteo_rows(lines: list[str] | None = None) -> list[list[str]]:
    lines = fx.criteo_mini_lines() if lines is None else lines
    return [line.split("\t") for i, line in enumerate(lines, 1) if i not in fx.CRITEO_MALFORMED]


def _criteo_reference(*, seed=2018, x4=False, min_count=None, rows=None, test_fraction=0.1):
    return _reference(
        _criteo_rows() if rows is None else rows,
        label=0,
        ints=range(1, 14) if x4 else [],
        hexes=range(14, 40),
        dense=[] if x4 else range(1, 14),
        seed=seed,
        test_fraction=test_fraction,
        valid_fraction=0.1 if x4 else 0.0,
        min_count=(10 if x4 else 1) if min_count is None else min_count,
        x4=x4,
    )


def _assert_matches(data: criteo.CTRData, expected: dict, dims: list[int]) -> None:
    assert data.field_dims == dims
    assert {s for s in ("train", "valid", "test") if getattr(data, s) is not None} == set(expected)
    for split, (ids, dense, labels) in expected.items():
        got = getattr(data, split)
        np.testing.assert_array_equal(got.ids, ids)
        np.testing.assert_array_equal(got.labels, labels)
        if dense is None:
            assert got.dense is None
        else:
            np.testing.assert_allclose(got.dense, dense, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------- the fixtures


def test_committed_fixtures_match_their_generator():
    assert ARCHIVE.stat().st_size + AVAZU.stat().st_size < 100_000
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        assert tar.getnames() == ["readme.txt", "test.txt", "train.txt"]  # train.txt last: the stream must skip
        train = tar.extractfile("train.txt").read()
        test = tar.extractfile("test.txt").read()
    assert train == fx.criteo_mini_train()  # archive bytes may differ between zlib builds, the members must not
    assert test == fx.criteo_mini_test() and all(line.count(b"\t") == 38 for line in test.splitlines())
    assert AVAZU.read_bytes() == fx.avazu_mini_csv()
    lines = fx.criteo_mini_lines()
    assert len(lines) == 300 and lines[6].count("\t") == 38 and lines[243] == ""
    assert sum(line.count("\t") == 39 for line in lines) == 300 - 3  # the malformed by count: 7, 42, 244


# ------------------------------------------------------------------------------------------- Criteo, official


def test_criteo_official_through_the_download_path(tmp_path):
    payload = ARCHIVE.read_bytes()
    with pytest.warns(MalformedLinesWarning, match=r"skipped 7 malformed of 300 lines \(line 7: has 39 fields"):
        data = load_criteo(tmp_path, url=ARCHIVE.as_uri(), sha256=_sha(payload), progress=False)
    expected, dims = _criteo_reference()
    _assert_matches(data, expected, dims)
    assert (len(data.train), len(data.test), data.valid) == (263, 30, None)  # test = ceil(0.1 * 293)
    assert data.num_dense == 13 and data.dense_names == [f"I{i}" for i in range(1, 14)]
    assert data.field_names == [f"C{i}" for i in range(1, 27)] and data.num_fields == 26
    assert data.train.ids.dtype == np.int32 and data.train.dense.dtype == np.float32
    assert data.train.labels.dtype == np.float32 and set(np.unique(data.train.labels)) <= {0.0, 1.0}
    assert isinstance(data.train.ids, np.memmap) and isinstance(data.test.dense, np.memmap)

    m = data.metadata
    assert (m["rows"], m["lines_read"], m["preprocessing"], m["min_count"]) == (293, 300, "official", 1)
    assert m["malformed"]["count"] == 7 and [line for line, _ in m["malformed"]["first"]] == sorted(fx.CRITEO_MALFORMED)
    for line, reason in m["malformed"]["first"]:
        assert fx.CRITEO_MALFORMED[line][1] in reason, (line, reason)
    assert m["malformed"]["by_field"] == {"fields": 3, "label": 2, "I4": 1, "C7": 1}
    assert m["source"]["sha256"] == _sha(payload) and m["source"]["member"].endswith(":train.txt")
    assert m["oov_id"] is None and m["splits"] == {"train": 263, "test": 30}
    folder = Path(m["folder"])
    report = (folder / "malformed.tsv").read_text().splitlines()
    assert report[0] == "line\tfield\treason" and [int(r.split("\t")[0]) for r in report[1:]] == sorted(
        fx.CRITEO_MALFORMED
    )
    assert json.loads((folder / "manifest.json").read_text())["field_dims"] == dims
    assert (tmp_path / fx.CRITEO_MINI_FILE).read_bytes() == payload  # the archive, cached under the URL's name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".part-")]
    assert not [p for p in folder.iterdir() if p.suffix not in (".npy", ".json", ".tsv")]  # temporary columns gone


def test_missing_values_label_encoding_and_scaling(tmp_path):
    data = _criteo(tmp_path)
    rows = _criteo_rows()
    codes = _split_codes(len(rows), 2018, 0.1, 0.0)
    train_rows = [r for r, c in zip(rows, codes) if c == 0]
    ids = np.concatenate([data.train.ids, data.test.ids])
    dense = np.concatenate([data.train.dense, data.test.dense])
    for f in range(26):
        # Every id is used: ids are 0 .. dims - 1 with no gaps, as LabelEncoder gives.
        assert set(ids[:, f]) == set(range(data.field_dims[f]))
        # One raw value, one id (across splits), increasing with the value's string; missing ("-1") is id 0.
        raw = [r[14 + f] or "-1" for r in train_rows]
        pairs = dict(zip(raw, data.train.ids[:, f]))
        assert len(set(pairs.values())) == len(pairs) and sorted(pairs, key=pairs.get) == sorted(pairs)
        if "-1" in pairs:
            assert pairs["-1"] == 0
    assert np.allclose(dense.min(0), 0) and np.allclose(dense.max(0), 1)  # min-max over all rows
    i2 = np.array([float(r[2]) if r[2] else 0.0 for r in train_rows])
    assert i2.min() < 0  # negative values in I2: the minimum is below the 0 that missing becomes
    missing_i1 = np.array([r[1] == "" for r in train_rows])
    assert missing_i1.sum() > 20 and np.all(data.train.dense[missing_i1, 0] == 0.0)  # I1 >= 0: missing -> 0 -> 0
    missing_i3 = np.array([r[3] == "" for r in train_rows])
    lo, hi = data.metadata["dense"][2]["min"], data.metadata["dense"][2]["max"]
    assert np.allclose(data.train.dense[missing_i3, 2], (0 - lo) / (hi - lo))


def test_split_sizes_and_determinism_by_seed(tmp_path):
    a = _criteo(tmp_path / "a", seed=7)
    b = _criteo(tmp_path / "b", seed=7)
    c = _criteo(tmp_path / "c", seed=8)
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(a, split).ids, getattr(b, split).ids)
    assert not np.array_equal(a.test.ids, c.test.ids)
    _assert_matches(c, *_criteo_reference(seed=8))
    d = _criteo(tmp_path / "d", test_fraction=0.25)
    assert (len(d.train), len(d.test)) == (293 - 74, 74)  # ceil(0.25 * 293) = 74


def test_malformed_lines_raise_with_their_line_number(tmp_path):
    with pytest.raises(CTRFormatError, match=r"train.txt, line 7: has 39 fields, expected 40"):
        _criteo(tmp_path, on_malformed="raise")
    assert not (tmp_path / "criteo").exists() or list((tmp_path / "criteo").iterdir()) == []
    # Without the line-count errors, the first problem is a bad label on line 99, and so on.
    lines = fx.criteo_mini_lines()
    clean = [line for i, line in enumerate(lines, 1) if i not in (7, 42)]
    source = tmp_path / "train.txt"
    source.write_text("\n".join(clean) + "\n")
    with pytest.raises(CTRFormatError, match=r"line 97: label must be 0 or 1, got '2'"):
        _from_path(tmp_path / "cache", source, on_malformed="raise")


def test_max_rows_keeps_the_first_valid_lines(tmp_path):
    data = _criteo(tmp_path, max_rows=100)
    m = data.metadata
    assert (m["rows"], m["lines_read"]) == (100, 103)  # lines 7, 42 and 99 were skipped on the way
    assert [line for line, _ in m["malformed"]["first"]] == [7, 42, 99]
    _assert_matches(data, *_criteo_reference(rows=_criteo_rows()[:100]))


def test_chunk_boundaries_change_nothing(tmp_path, monkeypatch):
    whole = _criteo(tmp_path / "whole")
    monkeypatch.setattr(criteo, "_CHUNK_BYTES", 700)  # a few lines per chunk
    monkeypatch.setattr(criteo, "_BLOCK_ROWS", 16)
    pieces = _criteo(tmp_path / "pieces")
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(whole, split).ids, getattr(pieces, split).ids)
        np.testing.assert_array_equal(getattr(whole, split).dense, getattr(pieces, split).dense)
    assert pieces.metadata["malformed"] == whole.metadata["malformed"]


def test_parser_accepts_exactly_the_documented_fields():
    def row(ints: list[str], hexes: list[str] | None = None, label: str = "1") -> bytes:
        hexes = hexes or ["0a1b2c3d"] * 26
        return ("\t".join([label, *ints, *hexes]) + "\n").encode()

    ok = ["-3", "0", "007", "", "123456789012345678", "-999999999999999999", "5", "6", "7", "8", "9", "10", "11"]
    labels, features, lines, bad = criteo._parse_lines(
        [row(ok, ["", "ffffffff", *["00000000"] * 24])], criteo._CRITEO, 1
    )
    assert bad == [] and labels.tolist() == [1] and lines.tolist() == [1]
    assert features[:13, 0].tolist() == [-3, 0, 7, MISSING, 123456789012345678, -999999999999999999, *range(5, 12)]
    assert features[13:15, 0].tolist() == [MISSING, 2**32 - 1]
    for field in ["+5", " 5", "5 ", "1.0", "1e3", "-", "--1", "1234567890123456789", "0x10"]:
        _, _, _, bad = criteo._parse_lines([row([field, *ok[1:]])], criteo._CRITEO, 1)
        assert len(bad) == 1 and bad[0][1] == "I1", field
    for field in ["0A1B2C3D", "0a1b2c3", "0a1b2c3d0", "0a1b2c3g", "-1"]:
        _, _, _, bad = criteo._parse_lines([row(ok, [field, *["0a1b2c3d"] * 25])], criteo._CRITEO, 1)
        assert len(bad) == 1 and bad[0][1] == "C1", field
    # CRLF line ends and a missing final newline are fine.
    labels, _, lines, bad = criteo._parse_lines([row(ok).replace(b"\n", b"\r\n"), row(ok)[:-1]], criteo._CRITEO, 5)
    assert bad == [] and lines.tolist() == [5, 6]


# ------------------------------------------------------------------------------------------------ Criteo, x4


def test_criteo_x4_bucket():
    values = np.array([-3, -1, 0, 1, 2, 3, 4, 5, 7, 8, 10, 100, 10**6])
    expected = [-3, -1, 0, 1, 2, 1, 1, 2, 3, 4, 5, 21, 190]  # floor(ln(x)^2) above 2
    assert criteo_x4_bucket(values).tolist() == expected == [_bucket(int(v)) for v in values]


def test_criteo_x4_preprocessing(tmp_path):
    data = _criteo(tmp_path, preprocessing="criteo_x4")
    expected, dims = _criteo_reference(x4=True)
    _assert_matches(data, expected, dims)
    assert (len(data.train), len(data.valid), len(data.test)) == (233, 30, 30)  # 8:1:1, ceil for valid and test
    assert data.num_dense == 0 and data.dense_names == [] and data.train.dense is None
    assert data.field_names == [*(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    m = data.metadata
    assert (m["oov_id"], m["min_count"], m["seed"]) == (0, 10, 2018)
    # The vocabulary comes from the training split: in training, a kept value was seen >= 10 times there ...
    for f in range(39):
        counts = Counter(data.train.ids[:, f].tolist())
        assert all(c >= 10 for i, c in counts.items() if i != 0)
    # ... and some values are rare enough to fall out, some rows of every split then carry the OOV id 0.
    assert all((getattr(data, s).ids == 0).any() for s in ("train", "valid", "test"))
    assert sum(f["oov_rows"] for f in m["fields"]) > 0 and all(f["kept"] == f["dim"] - 1 for f in m["fields"])


def test_min_count_with_official_preprocessing(tmp_path):
    data = _criteo(tmp_path, min_count=5)  # the high-frequency-only control: counted over all rows
    _assert_matches(data, *_criteo_reference(min_count=5))
    assert data.metadata["oov_id"] == 0 and (data.train.ids == 0).any()


# ------------------------------------------------------------------------------------------ cache and checksums


def test_cache_is_reused_without_parsing_or_the_archive(tmp_path, monkeypatch):
    first = _criteo(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("parsed again")

    monkeypatch.setattr(criteo, "_parse_to_columns", fail)
    (tmp_path / fx.CRITEO_MINI_FILE).unlink()  # not needed once the arrays are cached
    gone = (tmp_path / "nowhere" / fx.CRITEO_MINI_FILE).as_uri()
    again = load_criteo(tmp_path, url=gone, sha256=_sha(ARCHIVE.read_bytes()), download=False, progress=False)
    np.testing.assert_array_equal(again.test.ids, first.test.ids)
    assert again.metadata["folder"] == first.metadata["folder"]
    with pytest.raises(AssertionError, match="parsed again"):  # other settings: another cache folder
        load_criteo(tmp_path, url=ARCHIVE.as_uri(), sha256=_sha(ARCHIVE.read_bytes()), seed=1, progress=False)


def test_damaged_cache_is_rebuilt(tmp_path):
    first = _criteo(tmp_path)
    folder = Path(first.metadata["folder"])
    expected = np.array(first.train.ids)
    ids_file = folder / "train_ids.npy"
    ids_file.write_bytes(ids_file.read_bytes()[:-40])  # truncated: noticed by size
    with pytest.warns(UserWarning, match="Rebuilding the cache .*train_ids.npy is missing or has the wrong size"):
        again = _criteo(tmp_path)
    np.testing.assert_array_equal(again.train.ids, expected)

    payload = bytearray(ids_file.read_bytes())
    payload[-4:] = b"\xff\xff\xff\x7f"  # same size, wrong content: only verify=True hashes the arrays
    ids_file.write_bytes(bytes(payload))
    assert _criteo(tmp_path).train.ids[-1, -1] == 2**31 - 1
    with pytest.warns(UserWarning, match="does not match its SHA-256"):
        fixed = _criteo(tmp_path, verify=True)
    np.testing.assert_array_equal(fixed.train.ids, expected)


def test_checksum_mismatch_leaves_no_files(tmp_path):
    with pytest.raises(ChecksumError):
        load_criteo(tmp_path / "cache", url=ARCHIVE.as_uri(), sha256="0" * 64, progress=False)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []

    # A damaged archive already in the cache is reported, left untouched, and nothing is built from it.
    cached = tmp_path / "cache" / fx.CRITEO_MINI_FILE
    cached.write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match="left untouched"):
        load_criteo(tmp_path / "cache", url=ARCHIVE.as_uri(), sha256=_sha(ARCHIVE.read_bytes()), progress=False)
    assert cached.read_bytes() == b"not the archive" and not (tmp_path / "cache" / "criteo").exists()


def test_local_files_in_every_supported_layout(tmp_path):
    reference = _criteo(tmp_path / "reference")
    train = fx.criteo_mini_train()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("dac/train.txt", train)
    layouts = {
        "train.txt": train,
        "train.txt.gz": gzip.compress(train, mtime=0),
        "dac.tar.gz": fx.criteo_mini_archive(),
        "dac.tar": gzip.decompress(fx.criteo_mini_archive()),
        "dac.zip": zipped.getvalue(),
    }
    for name, payload in layouts.items():
        source = tmp_path / "src" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(payload)
        data = _from_path(tmp_path / name, source)
        np.testing.assert_array_equal(data.test.ids, reference.test.ids, err_msg=name)
        assert data.metadata["source"] == {
            "path": str(source),
            "url": None,
            "sha256": _sha(payload),
            "member": data.metadata["source"]["member"],
        }


@pytest.mark.filterwarnings("ignore::accel.datasets.criteo.MalformedLinesWarning")
def test_local_file_checksum_warning_and_reuse(tmp_path, monkeypatch):
    source = tmp_path / "train.txt"
    source.write_bytes(fx.criteo_mini_train())
    with pytest.warns(
        UserWarning, match=f"not checked against a known checksum; its sha256 is {_sha(source.read_bytes())}"
    ):
        first = load_criteo(tmp_path / "cache", path=source, progress=False)
    with pytest.raises(ChecksumError, match="left untouched"):
        load_criteo(tmp_path / "other", path=source, sha256="1" * 64, progress=False)
    pinned = _from_path(tmp_path / "cache", source, sha256=_sha(source.read_bytes()))
    np.testing.assert_array_equal(pinned.train.ids, first.train.ids)

    parse = criteo._parse_to_columns
    calls = []
    monkeypatch.setattr(criteo, "_parse_to_columns", lambda *a, **k: calls.append(1) or parse(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reused: no warning at all
        load_criteo(tmp_path / "cache", path=source, progress=False)
    assert calls == []
    lines = fx.criteo_mini_lines()
    source.write_text("\n".join(lines[:150]) + "\n")  # the file changed (size, time): rebuilt
    os.utime(source, ns=(1, 1))
    changed = _from_path(tmp_path / "cache", source)
    assert calls == [1] and changed.metadata["rows"] == 150 - 4


def test_unreadable_or_wrong_sources(tmp_path):
    cases = {
        "no_train.tar.gz": (fx.criteo_mini_archive(train_name="train_0.txt"), "no member named train.txt"),
        "truncated.tar.gz": (fx.criteo_mini_archive()[:5000], "not a readable"),
        "test.txt": (fx.criteo_mini_test(), "no valid Criteo .* line among 25 lines .*has 39 fields"),
    }
    for name, (payload, message) in cases.items():
        source = tmp_path / "src" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(payload)
        with pytest.raises(CTRFormatError, match=message):
            _from_path(tmp_path / "cache", source)
        assert not [p for p in (tmp_path / "cache" / "criteo").iterdir() if p.name.startswith(".part-")]


def test_tensors_share_memory_with_the_arrays(tmp_path):
    data = _criteo(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # copy-on-write maps are writable: torch.from_numpy does not warn
        ids, dense, labels = data.train.tensors()
    assert (ids.dtype, dense.dtype, labels.dtype) == (torch.int32, torch.float32, torch.float32)
    assert ids.shape == (263, 26) and ids.data_ptr() == data.train.ids.ctypes.data
    assert torch.equal(labels, torch.from_numpy(np.array(data.train.labels)))
    ids_cpu, dense_none, _ = _criteo(tmp_path, preprocessing="criteo_x4").valid.tensors("cpu")
    assert dense_none is None and ids_cpu.shape == (30, 39)
    embedding = torch.nn.Embedding(data.field_dims[0], 4)
    assert embedding(ids[:8, 0]).shape == (8, 4)  # int32 ids work as they are
    ids[0, 0] = 12345  # a private copy-on-write page: the cache on disk is unchanged
    assert np.load(Path(data.metadata["folder"]) / "train_ids.npy")[0, 0] != 12345


# ----------------------------------------------------------------------------------------------------- Avazu


def _avazu_reference(seed=2018):
    lines = fx.avazu_mini_lines()
    rows = [line.split(",") for i, line in enumerate(lines, 1) if i > 1 and i not in fx.AVAZU_MALFORMED]
    kinds = criteo._AVAZU.kinds
    return _reference(
        rows,
        label=1,
        ints=[c for c, k in enumerate(kinds) if k == "int"],
        hexes=[c for c, k in enumerate(kinds) if k == "hex"],
        dense=[],
        seed=seed,
        test_fraction=0.2,
        valid_fraction=0.0,
        min_count=1,
    )


def test_avazu_official(tmp_path):
    with pytest.warns(MalformedLinesWarning, match=r"skipped 4 malformed of 200 lines \(line 12: has 23 fields"):
        data = load_avazu(tmp_path, path=AVAZU, sha256=_sha(AVAZU.read_bytes()), progress=False)
    expected, dims = _avazu_reference()
    # The reference lists integer fields first; put the loader's fields (file order) in the same order.
    kinds = criteo._AVAZU.kinds
    columns = [c for c, k in enumerate(kinds) if k in ("int", "hex")]
    order = [c for c, k in enumerate(kinds) if k == "int"] + [c for c, k in enumerate(kinds) if k == "hex"]
    permutation = [columns.index(c) for c in order]
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(data, split).ids[:, permutation], expected[split][0], err_msg=split)
        np.testing.assert_array_equal(getattr(data, split).labels, expected[split][2])
    assert [data.field_dims[i] for i in permutation] == dims
    assert (len(data.train), len(data.test)) == (156, 40)  # 80/20: ceil(0.2 * 196)
    assert data.field_names == fx.AVAZU_COLUMNS[2:] and data.num_dense == 0 and data.train.dense is None
    m = data.metadata
    assert (m["rows"], m["lines_read"]) == (AVAZU_VALID_ROWS, 200)
    assert [line for line, _ in m["malformed"]["first"]] == sorted(fx.AVAZU_MALFORMED)
    for line, reason in m["malformed"]["first"]:
        assert fx.AVAZU_MALFORMED[line][1] in reason, (line, reason)


def test_avazu_kaggle_layouts_and_header(tmp_path):
    reference = _from_path(tmp_path / "reference", AVAZU, load_avazu)
    csv = fx.avazu_mini_csv()
    kaggle = io.BytesIO()
    with zipfile.ZipFile(kaggle, "w") as archive:  # the competition's zip holds train.gz (a gzipped csv)
        archive.writestr("train.gz", gzip.compress(csv, mtime=0))
        archive.writestr("test.gz", gzip.compress(b"id,hour\n", mtime=0))
    for name, payload in {
        "train.gz": gzip.compress(csv, mtime=0),
        "avazu-ctr-prediction.zip": kaggle.getvalue(),
    }.items():
        source = tmp_path / "src" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(payload)
        data = _from_path(tmp_path / name, source, load_avazu)
        np.testing.assert_array_equal(data.train.ids, reference.train.ids, err_msg=name)

    headless = tmp_path / "src" / "no_header.csv"
    headless.write_bytes(csv.split(b"\n", 1)[1])
    with pytest.raises(CTRFormatError, match="line 1: expected the header 'id,click,hour,C1,"):
        _from_path(tmp_path / "cache", headless, load_avazu)
    with pytest.raises(CTRFormatError, match=r"line 12: has 23 fields, expected 24"):
        _from_path(tmp_path / "cache", AVAZU, load_avazu, on_malformed="raise")


# ------------------------------------------------------------------------------------------ defaults and errors


def test_defaults_say_how_to_get_the_data(tmp_path):
    assert CRITEO_URL == "https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz"
    assert criteo.CRITEO_SHA256 is None and criteo.CRITEO_ROWS == 45_840_617 and criteo.AVAZU_ROWS == 40_428_967
    # No checksum is published: no ValueError any more, the default is a download trusted on first use; without one:
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        load_criteo(tmp_path, download=False)
    message = str(info.value)
    assert CRITEO_URL in message and "4,576,820,670 bytes" in message and "recorded on first use" in message
    assert str(tmp_path / CRITEO_URL.rsplit("/", 1)[1]) in message and "path=" in message
    with pytest.raises(FileNotFoundError, match="download=False") as info:
        load_criteo(tmp_path, sha256="a" * 64, download=False)
    assert str(tmp_path / CRITEO_URL.rsplit("/", 1)[1]) in str(info.value)
    with pytest.raises(ValueError, match="Avazu has no public download URL.*Kaggle"):
        load_avazu(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_criteo(tmp_path, path=tmp_path / "missing.txt")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ no published checksum: trust on first use


def _tofu(root: Path, url: str, **kwargs) -> criteo.CTRData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedLinesWarning)
        return load_criteo(root, url=url, **{"progress": False, **kwargs})


def _leftovers(root: Path) -> list[str]:
    """Everything a failed download could have left in root: parts, an archive, a record."""
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_first_download_records_its_hash_and_later_uses_check_it_offline(tmp_path, capsys, monkeypatch):
    payload, root = ARCHIVE.read_bytes(), tmp_path / "cache"
    record = root / f"{fx.CRITEO_MINI_FILE}.sha256"
    with serve(FIXTURES) as base:
        url = f"{base}/{fx.CRITEO_MINI_FILE}"
        data = _tofu(root, url, progress=True, archive_bytes=len(payload))
    note = f"first download: sha256 {_sha(payload)} recorded in {record}; later runs check it"
    assert note in capsys.readouterr().out and data.metadata["source_check"] == note
    assert record.read_text() == f"{_sha(payload)}  {fx.CRITEO_MINI_FILE}\n"  # sha256sum -c format
    assert (root / fx.CRITEO_MINI_FILE).read_bytes() == payload
    assert data.metadata["source"]["sha256"] == _sha(payload) and "first use" in data.metadata["source"]["trust"]
    _assert_matches(data, *_criteo_reference())
    assert not [p for p in root.iterdir() if p.name.startswith(".part-")]

    # The server is gone. Another build (more rows) reads the archive after checking it against the record; the same
    # settings reuse the arrays and still check the archive.
    checks, real = [], criteo.cache.sha256sum
    monkeypatch.setattr(criteo, "_HASHED", {})  # as in a new process: nothing hashed yet
    monkeypatch.setattr(criteo.cache, "sha256sum", lambda path: checks.append(path) or real(path))
    again = _tofu(root, url, download=False, max_rows=100)
    same = _tofu(root, url, download=False)
    archive_checks = [path for path in checks if Path(path).name == fx.CRITEO_MINI_FILE]
    assert len(again.train) + len(again.test) == 100 and archive_checks == [root / fx.CRITEO_MINI_FILE]  # once
    assert again.metadata["source_check"].endswith(f"matches the hash recorded in {record} at first download")
    np.testing.assert_array_equal(same.train.ids, data.train.ids)
    assert same.metadata["folder"] == data.metadata["folder"]


def test_a_changed_archive_fails_clearly_and_is_left_untouched(tmp_path):
    payload, root = ARCHIVE.read_bytes(), tmp_path / "cache"
    with serve(FIXTURES) as base:
        url = f"{base}/{fx.CRITEO_MINI_FILE}"
        _tofu(root, url)
    archive, record = root / fx.CRITEO_MINI_FILE, root / f"{fx.CRITEO_MINI_FILE}.sha256"
    tampered = payload[:-1] + bytes([payload[-1] ^ 1])
    archive.write_bytes(tampered)
    with pytest.raises(ChecksumError) as info:
        _tofu(root, url, max_rows=50)
    message = str(info.value)
    assert str(archive) in message and str(record) in message and "left untouched" in message
    assert _sha(tampered) in message and _sha(payload) in message  # both hashes
    assert archive.read_bytes() == tampered and record.read_text().startswith(_sha(payload))
    with pytest.raises(ChecksumError, match="left untouched"):  # the arrays built before do not hide it either
        _tofu(root, url)

    # The archive gone, the record kept: a new download is checked against the recorded hash.
    archive.unlink()
    served = tmp_path / "served"
    served.mkdir()
    (served / fx.CRITEO_MINI_FILE).write_bytes(tampered)
    with serve(served) as base, pytest.raises(ChecksumError, match="recorded in .*at the first download"):
        _tofu(root, f"{base}/{fx.CRITEO_MINI_FILE}", max_rows=50)
    assert not archive.exists()


def test_an_archive_found_in_the_cache_is_recorded_on_first_use(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / fx.CRITEO_MINI_FILE).write_bytes(ARCHIVE.read_bytes())
    gone = closed_port_url(fx.CRITEO_MINI_FILE)  # never contacted
    data = _tofu(root, gone, download=False)
    assert data.metadata["source_check"].startswith(f"first use of {root / fx.CRITEO_MINI_FILE} (found there")
    assert (root / f"{fx.CRITEO_MINI_FILE}.sha256").read_text().startswith(_sha(ARCHIVE.read_bytes()))
    (root / fx.CRITEO_MINI_FILE).write_bytes(ARCHIVE.read_bytes()[:100])
    (root / f"{fx.CRITEO_MINI_FILE}.sha256").unlink()
    with pytest.raises(ChecksumError, match=r"has 100 bytes, expected [\d,]+ .*left untouched"):
        _tofu(root, gone, archive_bytes=ARCHIVE.stat().st_size)
    assert not (root / f"{fx.CRITEO_MINI_FILE}.sha256").exists()


@pytest.mark.parametrize("failure", ["404", "closed port", "dropped"])
def test_a_failed_download_raises_download_error_and_leaves_nothing(tmp_path, failure):
    root = tmp_path / "cache"
    if failure == "closed port":
        with pytest.raises(DownloadError, match="Could not download .*path="):
            _tofu(root, closed_port_url(fx.CRITEO_MINI_FILE))
    else:
        name = "missing.tar.gz" if failure == "404" else fx.CRITEO_MINI_FILE
        match = "HTTP 404" if failure == "404" else r"Incomplete download .*received [\d,]+ of [\d,]+ bytes"
        with serve(FIXTURES, truncate=failure == "dropped") as base, pytest.raises(DownloadError, match=match) as info:
            _tofu(root, f"{base}/{name}")
        assert not isinstance(info.value, ChecksumError)  # unavailable, not tampered: a caller may fall back
    assert _leftovers(root) == []


def test_a_size_mismatch_is_caught_before_anything_is_kept(tmp_path):
    root, size = tmp_path / "cache", ARCHIVE.stat().st_size
    with serve(FIXTURES) as base, pytest.raises(ChecksumError, match=f"reports {size:,} bytes, expected {size + 1:,}"):
        _tofu(root, f"{base}/{fx.CRITEO_MINI_FILE}", archive_bytes=size + 1)
    assert _leftovers(root) == []
    # the default size is CRITEO_ARCHIVE_BYTES for CRITEO_URL only (other URLs: the server's Content-Length)
    assert CRITEO_ARCHIVE_BYTES == 4_576_820_670


def test_an_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    root = tmp_path / "cache"

    class Interrupting(io.BytesIO):
        headers = {"Content-Length": str(10 << 20)}

        def read(self, size=-1):
            if self.tell() >= 1 << 20:
                raise KeyboardInterrupt
            return super().read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(criteo.urllib.request, "urlopen", lambda url, timeout: Interrupting(bytes(10 << 20)))
    with pytest.raises(KeyboardInterrupt):
        _tofu(root, "https://example.invalid/criteo.tar.gz")
    assert _leftovers(root) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preprocessing": "torchrec"}, "Invalid preprocessing: 'torchrec'"),
        ({"on_malformed": "ignore"}, "Invalid on_malformed: 'ignore'"),
        ({"test_fraction": 0.0}, "Invalid test_fraction: 0.0"),
        ({"test_fraction": 1}, "Invalid test_fraction: 1"),
        ({"valid_fraction": -0.1}, "Invalid valid_fraction: -0.1"),
        ({"test_fraction": 0.5, "valid_fraction": 0.5}, "Invalid test_fraction \\+ valid_fraction"),
        ({"max_rows": 0}, "Invalid max_rows: 0"),
        ({"seed": -1}, "Invalid seed: -1"),
        ({"min_count": 0}, "Invalid min_count: 0"),
        ({"sha256": "abc"}, "Invalid sha256: 'abc'"),
        ({"sha256": "g" * 64}, "Invalid sha256: 'ggg"),
        ({"archive_bytes": 0}, "Invalid archive_bytes: 0"),
        ({"download": "no"}, "Invalid download: 'no'; expected True or False"),
        ({"progress": "yes"}, "Invalid progress: 'yes'; expected True or False"),
        ({"verify": 1}, "Invalid verify: 1; expected True or False"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, message):
    kwargs = {"path": AVAZU, **kwargs}  # never reached: arguments are checked first
    with pytest.raises(ValueError, match=message):
        load_criteo(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_build_removes_what_a_killed_build_left_and_keeps_a_live_ones(tmp_path):
    builds = tmp_path / "criteo"  # where builds make their .part-* folders (next to the finished ones)
    builds.mkdir()
    owner, live = start_part_owner(builds)
    try:
        _, dead = killed_parts(builds)  # as a build killed mid-way (SIGKILL) leaves its hidden folder
        data = _criteo(tmp_path)
        assert not any(part.exists() for part in dead)
        assert all(part.exists() for part in live)
        assert sorted(p.name for p in builds.iterdir() if not p.name.startswith(".part-")) == [
            Path(data.metadata["folder"]).name
        ]
    finally:
        stop(owner)
