"""Tests for accel.datasets.text: the stdlib corpus, enwik8 (against data/fixtures/enwik8_mini.zip) and the samplers."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import platform
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _parts import killed_parts  # tests/_parts.py

from accel.datasets import text
from accel.datasets.cache import ChecksumError
from accel.datasets.text import (
    ENWIK8_SHA256,
    ENWIK8_URL,
    TextFormatError,
    ValidationWindows,
    decode,
    load_corpus,
    load_enwik8,
    load_stdlib_corpus,
    random_windows,
    stdlib_files,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_text_fixtures", FIXTURES / "make_text_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _load_fixture_script()
MINI = FIXTURES / fx.ENWIK8_MINI_FILE


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# ------------------------------------------------------------------------------------------------- stdlib corpus


@pytest.fixture
def fake_stdlib(tmp_path) -> Path:
    """A small tree shaped like Lib/: 40 modules and a package, plus everything the corpus must leave out."""
    root = tmp_path / "lib"
    for i in range(40):
        path = root / (f"mod{i:02d}.py" if i < 30 else f"pkg/sub{i:02d}.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""Module {i}."""\n\n' + f"VALUE_{i} = {i}\n" * (i + 1))
    for excluded in [
        "test/test_mod.py",
        "pkg/tests/test_sub.py",
        "idlelib/idle_test/test_x.py",
        "site-packages/thirdparty.py",
        "__pycache__/mod00.py",
        "config-3.11-x86_64-linux-gnu/python-config.py",
        "_sysconfigdata__linux_x86_64-linux-gnu.py",
        "README.txt",
    ]:
        (root / excluded).parent.mkdir(parents=True, exist_ok=True)
        (root / excluded).write_text("EXCLUDED = True\n")
    return root


def _documents(split: bytes) -> list[bytes]:
    """File contents of a split (each file is followed by a NUL byte; the last one may be cut by the budget)."""
    parts = split.split(b"\x00")
    return [p for p in parts if p]


def test_stdlib_files_order_and_exclusions(fake_stdlib):
    files = stdlib_files(fake_stdlib)
    expected = {f"mod{i:02d}.py" for i in range(30)} | {f"pkg/sub{i:02d}.py" for i in range(30, 40)}
    assert set(files) == expected and len(files) == 40
    assert files == sorted(expected, key=lambda p: hashlib.sha256(p.encode()).hexdigest())


def test_stdlib_corpus_split_by_file_and_manifest(fake_stdlib, tmp_path):
    corpus = load_stdlib_corpus(None, val_every=5, root=tmp_path / "cache", stdlib=fake_stdlib)
    files = stdlib_files(fake_stdlib)
    contents = {rel: (fake_stdlib / rel).read_bytes() for rel in files}
    train, val = bytes(corpus.train.numpy()), bytes(corpus.val.numpy())
    assert corpus.train.dtype == torch.uint8 and corpus.test is None
    # Every 5th file in corpus order is a validation file, whole; the two splits share no file.
    assert _documents(val) == [contents[rel] for rel in files[4::5]]
    assert _documents(train) == [contents[rel] for i, rel in enumerate(files) if i % 5 != 4]
    assert len(train) + len(val) == sum(len(c) + 1 for c in contents.values())

    m = corpus.manifest
    assert m["files"] == {"train": 32, "val": 8} and m["files_available"] == 40
    assert m["truncated_files"] == {"train": None, "val": None}
    assert m["bytes"] == {"train": len(train), "val": len(val)}
    assert m["sha256"] == {"train": _sha(train), "val": _sha(val)}
    assert m["python_version"] == platform.python_version() and m["max_bytes"] is None
    folder = tmp_path / "cache" / "python-stdlib" / "pycustom-all-every5"
    assert json.loads((folder / "manifest.json").read_text()) == m
    assert (folder / "train.bin").read_bytes() == train and (folder / "val.bin").read_bytes() == val
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".part-")]


def test_stdlib_corpus_budget_and_determinism(fake_stdlib, tmp_path):
    a = load_stdlib_corpus(1000, val_every=4, root=tmp_path / "a", stdlib=fake_stdlib)
    b = load_stdlib_corpus(1000, val_every=4, root=tmp_path / "b", stdlib=fake_stdlib)
    assert (len(a.train), len(a.val)) == (750, 250)  # validation's share: max_bytes // val_every
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.manifest["sha256"] == b.manifest["sha256"]
    # Each split holds its first files in corpus order, whole, then a cut piece of the next one.
    files = stdlib_files(fake_stdlib)
    for split, names in [("train", [f for i, f in enumerate(files) if i % 4 != 3]), ("val", files[3::4])]:
        data = bytes(getattr(a, split).numpy())
        whole = _documents(data)[:-1]
        assert whole == [(fake_stdlib / f).read_bytes() for f in names[: len(whole)]]
        assert a.manifest["truncated_files"][split] == names[len(whole)]
        assert (fake_stdlib / names[len(whole)]).read_bytes().startswith(_documents(data)[-1])


def test_stdlib_corpus_cache_is_reused_and_rebuilt_when_stale(fake_stdlib, tmp_path, monkeypatch):
    first = load_stdlib_corpus(None, val_every=5, root=tmp_path, stdlib=fake_stdlib)
    build = text._build_stdlib
    calls = []
    monkeypatch.setattr(text, "_build_stdlib", lambda *args: calls.append(1) or build(*args))
    again = load_stdlib_corpus(None, val_every=5, root=tmp_path, stdlib=fake_stdlib)
    assert calls == [] and torch.equal(again.train, first.train)

    folder = tmp_path / "python-stdlib" / "pycustom-all-every5"
    (folder / "val.bin").write_bytes(b"corrupt")  # a damaged cache file is rebuilt
    assert torch.equal(load_stdlib_corpus(None, val_every=5, root=tmp_path, stdlib=fake_stdlib).val, first.val)
    assert calls == [1]

    (fake_stdlib / "mod07.py").write_text("CHANGED = 1\n")  # the library changed: rebuilt
    changed = load_stdlib_corpus(None, val_every=5, root=tmp_path, stdlib=fake_stdlib)
    assert calls == [1, 1] and b"CHANGED = 1\n" in bytes(changed.train.numpy()) + bytes(changed.val.numpy())


def test_stdlib_corpus_of_this_python(tmp_path):
    corpus = load_stdlib_corpus(300_000, root=tmp_path)
    again = load_stdlib_corpus(300_000, root=tmp_path / "elsewhere")
    assert torch.equal(corpus.train, again.train) and torch.equal(corpus.val, again.val)
    assert (len(corpus.train), len(corpus.val)) == (285_000, 15_000)
    assert corpus.manifest["python_version"] == platform.python_version()
    assert corpus.manifest["files"]["val"] >= 1
    assert "def " in decode(corpus.train[:50_000]) and "import " in decode(corpus.val)
    assert load_corpus("python-stdlib", max_bytes=300_000, root=tmp_path).manifest == corpus.manifest


def test_stdlib_corpus_invalid_arguments(fake_stdlib, tmp_path):
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match=f"Invalid max_bytes: {bad!r}"):
            load_stdlib_corpus(bad, root=tmp_path, stdlib=fake_stdlib)
    with pytest.raises(ValueError, match="Invalid val_every: 1"):
        load_stdlib_corpus(val_every=1, root=tmp_path, stdlib=fake_stdlib)
    with pytest.raises(ValueError, match="Invalid max_bytes: 3; expected at least val_every = 4"):
        load_stdlib_corpus(3, val_every=4, root=tmp_path, stdlib=fake_stdlib)
    with pytest.raises(ValueError, match="has only 40 files"):
        load_stdlib_corpus(val_every=50, root=tmp_path, stdlib=fake_stdlib)
    with pytest.raises(FileNotFoundError):
        load_stdlib_corpus(root=tmp_path, stdlib=tmp_path / "missing")
    with pytest.raises(ValueError, match="Invalid name: 'wiki'"):
        load_corpus("wiki")


# --------------------------------------------------------------------------------------------------------- enwik8


def test_committed_fixture_matches_its_generator():
    committed = MINI.read_bytes()
    assert len(committed) < 10_000
    with zipfile.ZipFile(io.BytesIO(committed)) as archive:
        assert archive.namelist() == ["enwik8"]
        member = archive.read("enwik8")
    assert member == fx.enwik8_mini_text()  # zip bytes may differ between zlib builds, the member must not
    assert 4_000 < len(member) < 10_000 and member.startswith(b"<mediawiki ")
    assert "°".encode() in member  # multi-byte UTF-8, as in the real file


def test_enwik8_fixture_through_the_download_path(tmp_path):
    payload = MINI.read_bytes()
    member = fx.enwik8_mini_text()
    corpus = load_enwik8(url=MINI.as_uri(), sha256=_sha(payload), root=tmp_path, progress=False)
    n, eval_size = len(member), len(member) // 20
    assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (n - 2 * eval_size, eval_size, eval_size)
    assert all(t.dtype == torch.uint8 for t in (corpus.train, corpus.val, corpus.test))
    assert bytes(torch.cat([corpus.train, corpus.val, corpus.test]).numpy()) == member
    assert corpus.manifest["sha256"] == _sha(member) and corpus.manifest["bytes"] == n
    assert corpus.manifest["split"] == {"train": n - 2 * eval_size, "val": eval_size, "test": eval_size}
    assert (tmp_path / fx.ENWIK8_MINI_FILE).read_bytes() == payload  # the zip, cached under the URL's name
    assert (tmp_path / "enwik8_mini.bin").read_bytes() == member  # and its member, as raw bytes

    # Cached: works with download=False, from a URL that no longer exists.
    gone = (tmp_path / "nowhere" / fx.ENWIK8_MINI_FILE).as_uri()
    again = load_enwik8(url=gone, sha256=_sha(payload), root=tmp_path, download=False, progress=False)
    assert torch.equal(again.train, corpus.train)

    # A damaged extracted file is noticed (SHA-256 in the .bin.json) and extracted again from the zip.
    (tmp_path / "enwik8_mini.bin").write_bytes(b"x" * n)
    assert torch.equal(load_enwik8(url=gone, sha256=_sha(payload), root=tmp_path, progress=False).val, corpus.val)


def test_enwik8_defaults_and_missing_file(tmp_path):
    assert ENWIK8_URL == "http://mattmahoney.net/dc/enwik8.zip" and len(ENWIK8_SHA256) == 64
    with pytest.raises(FileNotFoundError) as info:
        load_enwik8(root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "enwik8.zip") in message and ENWIK8_URL in message
    assert ENWIK8_SHA256 in message and "36,445,475" in message
    assert list(tmp_path.iterdir()) == []


def test_enwik8_checksum_mismatch_leaves_no_file(tmp_path):
    with pytest.raises(ChecksumError):
        load_enwik8(url=MINI.as_uri(), sha256="0" * 64, root=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def _stored_zip(member: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("enwik8", member)
    return out.getvalue()


def _corrupt_zips() -> dict[str, tuple[bytes, str]]:
    good = MINI.read_bytes()
    stored = _stored_zip(fx.enwik8_mini_text())
    offset = stored.index(b"<mediawiki") + 100
    flipped = stored[:offset] + bytes([stored[offset] ^ 0xFF]) + stored[offset + 1 :]
    return {
        "truncated": (good[: len(good) // 2], "not a readable zip"),
        "not_a_zip": (b"this is not an archive" * 10, "not a readable zip"),
        "wrong_member": (fx.enwik8_mini_zip(member_name="enwik9"), "no member 'enwik8'"),
        "bad_crc": (flipped, "CRC"),
        "empty_member": (fx.enwik8_mini_zip(member_bytes=b""), "is empty"),
        "too_small": (fx.enwik8_mini_zip(member_bytes=b"<mediawiki>"), "too few to split"),
    }


CORRUPT = _corrupt_zips()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_zip_with_matching_checksum_gives_clear_error(case, tmp_path):
    payload, phrase = CORRUPT[case]
    source = tmp_path / "srv" / "broken.zip"
    source.parent.mkdir()
    source.write_bytes(payload)
    with pytest.raises(TextFormatError, match=phrase):
        load_enwik8(url=source.as_uri(), sha256=_sha(payload), root=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "broken.bin").exists() or case == "too_small"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".part-")]


# ------------------------------------------------------------------------------------------------------- samplers

DATA = torch.arange(200, dtype=torch.uint8)  # byte value = position, so a window shows where it starts


def test_random_windows_shapes_shift_and_range():
    x, y = random_windows(DATA, 64, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 10) and x.dtype == y.dtype == torch.int64
    starts = x[:, 0]
    assert torch.equal(x, starts[:, None] + torch.arange(10))  # contiguous windows of the data
    assert torch.equal(y, x + 1)  # targets: the next byte
    assert starts.min() >= 0 and starts.max() <= 200 - 11
    many, _ = random_windows(DATA, 5000, 10, torch.Generator().manual_seed(1))
    assert set(many[:, 0].tolist()) == set(range(190))  # every start in [0, N - T - 1] occurs
    x, y = random_windows(DATA, 3, 199, torch.Generator())  # the longest window: the whole sequence
    assert torch.equal(x[0], DATA[:199].long()) and torch.equal(y[2], DATA[1:].long())


def test_random_windows_determinism_numpy_and_global_rng():
    state = torch.get_rng_state()
    a = random_windows(DATA, 8, 16, torch.Generator().manual_seed(5))
    b = random_windows(DATA.numpy(), 8, 16, torch.Generator().manual_seed(5))
    c = random_windows(DATA, 8, 16, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert torch.equal(torch.get_rng_state(), state)
    x, _ = random_windows(DATA, 2, 4, torch.Generator().manual_seed(0), device="cpu")
    assert x.device.type == "cpu" and x.dtype == torch.int64


def test_window_errors():
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"Invalid seq_len: 200; the data have 200 tokens"):
        random_windows(DATA, 2, 200, g)
    with pytest.raises(ValueError, match="Invalid batch_size: 0"):
        random_windows(DATA, 0, 8, g)
    with pytest.raises(ValueError, match="Invalid seq_len: 0"):
        random_windows(DATA, 2, 0, g)
    with pytest.raises(TypeError, match="Invalid generator"):
        random_windows(DATA, 2, 8, None)
    with pytest.raises(ValueError, match="Invalid data: shape"):
        random_windows(DATA.view(10, 20), 2, 8, g)
    with pytest.raises(ValueError, match="Invalid data: dtype"):
        random_windows(DATA.float(), 2, 8, g)
    with pytest.raises(ValueError, match="Invalid seq_len: 8; the data have 5 tokens"):
        ValidationWindows(DATA[:5], 2, 8)
    with pytest.raises(ValueError, match="Invalid max_windows: 0"):
        ValidationWindows(DATA, 2, 8, max_windows=0)


def test_validation_windows_tile_the_data():
    data = DATA[:101]
    windows = ValidationWindows(data, 3, 10)
    assert windows.num_windows == 10 and windows.num_tokens == 100 and len(windows) == 4
    batches = list(windows)
    assert [x.shape[0] for x, _ in batches] == [3, 3, 3, 1]
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert torch.equal(x.flatten(), data[:100].long()) and torch.equal(y.flatten(), data[1:101].long())
    again = list(windows)  # the same windows on every pass
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_validation_windows_subset_is_evenly_spread():
    windows = ValidationWindows(DATA, 4, 10, max_windows=4)  # 19 windows, keep 4
    assert windows.starts.tolist() == [0, 40, 90, 140]
    (x, y), = list(windows)
    assert torch.equal(x[:, 0], torch.tensor([0, 40, 90, 140])) and torch.equal(y, x + 1)
    assert ValidationWindows(DATA, 4, 10, max_windows=1000).num_windows == 19


def test_decode():
    assert decode(torch.tensor([104, 105], dtype=torch.uint8)) == "hi"
    assert decode(np.array([[0xC2, 0xB0]], dtype=np.uint8)) == "°"
    assert decode(b"\xff") == "\ufffd"


def test_enwik8_removes_parts_of_a_killed_download_or_extraction(tmp_path):
    _, dead = killed_parts(tmp_path)  # a zip download or member extraction killed mid-way leaves a .part-* file
    payload = MINI.read_bytes()
    load_enwik8(url=MINI.as_uri(), sha256=_sha(payload), root=tmp_path, progress=False)
    assert not any(part.exists() for part in dead)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".part-")]


@pytest.mark.parametrize("name", ["download", "progress"])
def test_enwik8_flags_must_be_bools(tmp_path, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: 'no'; expected True or False"):
        load_enwik8(root=tmp_path, **{name: "no"})
    assert list(tmp_path.iterdir()) == []
