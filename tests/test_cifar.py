"""Tests for accel.datasets.cifar (against the mini fixtures in data/fixtures) and resnet18_cifar."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from accel.datasets.cache import ChecksumError
from accel.datasets.cifar import CIFAR10, CifarFormatError, CifarSplit, load_cifar, normalize, random_crop_flip
from accel.models.vision import resnet18_cifar

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_cifar_fixtures", FIXTURES / "make_cifar_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _load_fixture_script()
CASES = {  # name -> (fixture file, contents builder, archive builder, label key, train members, test members)
    "cifar10": (
        fx.CIFAR10_FILE,
        fx.cifar10_contents,
        fx.cifar10_archive,
        b"labels",
        [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
        ["cifar-10-batches-py/test_batch"],
    ),
    "cifar100": (
        fx.CIFAR100_FILE,
        fx.cifar100_contents,
        fx.cifar100_archive,
        b"fine_labels",
        ["cifar-100-python/train"],
        ["cifar-100-python/test"],
    ),
}


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _serve_bytes(folder: Path, filename: str, payload: bytes) -> tuple[str, str]:
    """Write payload to folder/filename; return its file:// URL and sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_bytes(payload)
    return path.as_uri(), _sha(payload)


def _expected(name: str, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    _, contents, _, label_key, _, _ = CASES[name]
    batches = contents()
    images = np.concatenate([batches[m][b"data"] for m in members]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([batches[m][label_key] for m in members])
    return images, labels


# ----------------------------------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_committed_fixture_matches_its_generator(name):
    filename, _, archive, *_ = CASES[name]
    committed = (FIXTURES / filename).read_bytes()
    assert len(committed) < 20_000
    # Compare the tar bytes: gzip output may differ between zlib builds, the tar inside must not.
    assert gzip.decompress(committed) == gzip.decompress(archive())


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_fixture_via_file_url(name, tmp_path):
    filename, _, _, _, train_members, test_members = CASES[name]
    payload = (FIXTURES / filename).read_bytes()
    train, test = load_cifar(
        name, url=(FIXTURES / filename).as_uri(), sha256=_sha(payload), root=tmp_path, progress=False
    )
    assert (tmp_path / filename).read_bytes() == payload  # cached under the URL's file name
    for split, members in [(train, train_members), (test, test_members)]:
        images, labels = _expected(name, members)
        assert isinstance(split, CifarSplit) and split.name == name
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(labels), 3, 32, 32)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(labels),)
        assert len(split) == len(labels)
        assert torch.equal(split.images, torch.from_numpy(images))
        assert torch.equal(split.labels, torch.from_numpy(labels))
    expected_classes = fx.CIFAR10_CLASSES if name == "cifar10" else fx.CIFAR100_CLASSES
    assert train.classes == test.classes == expected_classes
    assert len(train) == (50 if name == "cifar10" else 20) and len(test) == 10


def test_cifar_channel_order(tmp_path):
    """Row layout is 1024 R, 1024 G, 1024 B: pixel (c, i, j) of image n is data[n, 1024 c + 32 i + j]."""
    payload = (FIXTURES / fx.CIFAR10_FILE).read_bytes()
    train, _ = load_cifar(
        url=(FIXTURES / fx.CIFAR10_FILE).as_uri(), sha256=_sha(payload), root=tmp_path, progress=False
    )
    row = fx.cifar10_contents()["cifar-10-batches-py/data_batch_1"][b"data"][3]
    for c, i, j in [(0, 0, 0), (1, 5, 17), (2, 31, 30)]:
        assert train.images[3, c, i, j].item() == row[1024 * c + 32 * i + j]


def test_load_via_http_then_offline(tmp_path):
    payload = (FIXTURES / fx.CIFAR100_FILE).read_bytes()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(FIXTURES))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{fx.CIFAR100_FILE}"
    try:
        train, test = load_cifar("cifar100", url=url, sha256=_sha(payload), root=tmp_path, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert len(train) == 20 and len(test) == 10
    # The server is gone: the cached, verified archive is used, also with download=False.
    again, _ = load_cifar("cifar100", url=url, sha256=_sha(payload), root=tmp_path, download=False, progress=False)
    assert torch.equal(again.images, train.images)


# ------------------------------------------------------------------------------------------------------- the errors


@pytest.mark.parametrize("name", ["download", "progress"])
def test_flags_must_be_bools(tmp_path, name):
    with pytest.raises(ValueError, match=rf"Invalid {name}: 'no'; expected True or False"):
        load_cifar(root=tmp_path, **{name: "no"})
    assert list(tmp_path.iterdir()) == []


def test_invalid_name():
    with pytest.raises(ValueError, match=r"Invalid name: 'cifar1000'; allowed: \('cifar10', 'cifar100'\)"):
        load_cifar("cifar1000")


def test_download_false_with_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar("cifar10", root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert CIFAR10.url in message and CIFAR10.sha256 in message and "170,498,071" in message
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_leaves_no_file(tmp_path):
    url = (FIXTURES / fx.CIFAR10_FILE).as_uri()
    root = tmp_path / "cache"
    with pytest.raises(ChecksumError):
        load_cifar(url=url, sha256="0" * 64, root=root, progress=False)
    assert not root.exists() or list(root.iterdir()) == []


def _corrupt_archives() -> dict[str, tuple[bytes, str]]:
    """name -> (archive bytes, a phrase the error must contain); each is a broken CIFAR-10 archive."""
    good = (FIXTURES / fx.CIFAR10_FILE).read_bytes()
    contents = fx.cifar10_contents()

    def rebuild(**changes) -> bytes:
        files = {name: fx.pickle_like_cifar(obj) for name, obj in contents.items()}
        for short, payload in changes.items():
            name = f"cifar-10-batches-py/{short}"
            if payload is None:
                del files[name]
            else:
                files[name] = payload
        return fx.tar_gz(files)

    bad_shape = {**contents["cifar-10-batches-py/data_batch_2"], b"data": np.zeros((10, 1000), np.uint8)}
    few_labels = {**contents["cifar-10-batches-py/test_batch"], b"labels": [1, 2, 3]}
    big_label = {**contents["cifar-10-batches-py/test_batch"], b"labels": [10] * 10}
    evil = pickle.dumps({b"data": print}, protocol=2)  # a global outside the allow-list (harmless if it ran)
    return {
        "truncated": (good[: len(good) // 2], "not a readable tar.gz"),
        "not_gzip": (b"this is not an archive" * 10, "not a readable tar.gz"),
        "missing_member": (rebuild(data_batch_3=None), "data_batch_3"),
        "not_a_pickle": (rebuild(test_batch=b"garbage"), "not a readable pickle"),
        "bad_shape": (rebuild(data_batch_2=fx.pickle_like_cifar(bad_shape)), "[N, 3072]"),
        "few_labels": (rebuild(test_batch=fx.pickle_like_cifar(few_labels)), "one per image"),
        "label_range": (rebuild(test_batch=fx.pickle_like_cifar(big_label)), "[0, 10)"),
        "disallowed_global": (rebuild(test_batch=evil), "refusing to unpickle global __builtin__.print"),
    }


CORRUPT = _corrupt_archives()


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_archive_with_matching_checksum_gives_clear_error(case, tmp_path):
    payload, phrase = CORRUPT[case]
    url, sha = _serve_bytes(tmp_path / "srv", "broken.tar.gz", payload)
    with pytest.raises(CifarFormatError) as info:
        load_cifar(url=url, sha256=sha, root=tmp_path / "cache", progress=False)
    assert phrase in str(info.value)


# --------------------------------------------------------------------------------------------------- normalisation


def test_normalize():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    split = CifarSplit(images=images, labels=torch.zeros(2, dtype=torch.int64), classes=["a"], name="cifar10")
    out = split.normalized()
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    expected = [(v - m) / s for v, m, s in zip([0.0, 0.2, 1.0], CIFAR10.mean, CIFAR10.std)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected))
    assert torch.allclose(split.normalized(mean=(0, 0, 0), std=(1, 1, 1)), images.float() / 255)
    mean, std = split.channel_stats()
    assert np.allclose(mean, [0.0, 0.2, 1.0]) and np.allclose(std, 0.0)
    with pytest.raises(ValueError, match="Invalid std"):
        normalize(images, (0, 0, 0), (1, 0, 1))


# ----------------------------------------------------------------------------------------------------- augmentation


def _unique_images(batch: int, channels: int = 3, size: int = 8) -> torch.Tensor:
    """Every pixel value distinct, so a crop's position can be recovered exactly."""
    return torch.arange(batch * channels * size * size, dtype=torch.float32).view(batch, channels, size, size)


def test_augmentation_is_deterministic_and_leaves_global_rng_alone():
    x = _unique_images(16)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    a = random_crop_flip(x, torch.Generator().manual_seed(7))
    torch.manual_seed(2)  # a different global seed must not matter
    b = random_crop_flip(x, torch.Generator().manual_seed(7))
    c = random_crop_flip(x, torch.Generator().manual_seed(8))
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    random_crop_flip(x, torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_augmentation_preserves_shape_dtype(dtype):
    x = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(dtype)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


def test_flip_actually_flips():
    # Without padding the only randomness is the flip: each output is the image or its mirror, and both occur.
    x = torch.zeros(64, 1, 4, 4)
    x[:, :, :, 0] = 1.0  # a bright left edge
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    kept = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(kept ^ mirrored)
    assert mirrored.any() and kept.any()
    assert torch.equal(out[mirrored][:, :, :, -1], torch.ones(int(mirrored.sum()), 1, 4))
    # p = 0.5: over 4,000 images the flip rate is within 0.5 +- 0.05 (that fails with probability < 1e-9).
    many = random_crop_flip(
        torch.zeros(4000, 1, 2, 2).index_fill_(3, torch.tensor([0]), 1.0), torch.Generator().manual_seed(1), padding=0
    )
    assert abs(many[:, 0, 0, 1].mean().item() - 0.5) < 0.05


def test_crops_are_windows_of_the_reflect_padded_image():
    padding, size = 2, 8
    x = _unique_images(48, size=size)
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=padding)
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    seen = set()
    for n in range(x.shape[0]):
        matches = []
        for oy in range(2 * padding + 1):
            for ox in range(2 * padding + 1):
                window = padded[n, :, oy : oy + size, ox : ox + size]
                matches += [(oy, ox, flip) for flip, w in [(False, window), (True, window.flip(-1))] if w.equal(out[n])]
        assert len(matches) == 1, f"image {n}: output is not a single window of the padded image"
        seen.add(matches[0])
    assert len({(oy, ox) for oy, ox, _ in seen}) > 10  # offsets vary over the batch


def test_augmentation_validates_arguments():
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(TypeError, match="Invalid generator"):
        random_crop_flip(x, None)
    with pytest.raises(ValueError, match="Invalid padding: 8"):
        random_crop_flip(x, torch.Generator(), padding=8)
    with pytest.raises(ValueError, match="Invalid x shape"):
        random_crop_flip(x[0], torch.Generator())


# --------------------------------------------------------------------------------------------------------- ResNet-18


def test_resnet18_cifar_shape_and_parameter_count():
    model = resnet18_cifar(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the usual 11.17M
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
