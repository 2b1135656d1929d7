"""The README's code snippets run as written, on toy stand-ins for the names a reader's own script would define
(a dataset, a model, an optimizer, a batch). Each ```python block is executed in a namespace holding exactly those."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def snippet(marker: str) -> str:
    found = [code for code in snippets() if marker in code]
    assert len(found) == 1, f"expected one README snippet containing {marker!r}, found {len(found)}"
    return found[0]


def toy_classification(generator: torch.Generator, n: int = 256):
    x = torch.randn(n, 8, generator=generator)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def test_every_snippet_is_covered():
    markers = ["accel.infobatch", "accel.echo", "accel.cowclip", "accel.moe"]
    assert len(snippets()) == len(markers), "a README snippet without a test here: add one"
    for marker in markers:
        snippet(marker)


def test_infobatch_snippet(capsys):
    generator = torch.Generator().manual_seed(0)
    model = nn.Linear(8, 2)
    namespace = {"train_set": toy_classification(generator), "num_epochs": 4, "model": model, "F": F,
                 "DataLoader": DataLoader, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
    exec(snippet("accel.infobatch"), namespace)
    assert "sample-iterations saved:" in capsys.readouterr().out
    assert 0 < namespace["sampler"].saved_fraction < 1


def test_echo_snippet(capsys):
    generator = torch.Generator().manual_seed(1)

    def augment(sample):
        x, y = sample
        return x + 0.01, y

    namespace = {"train_set": toy_classification(generator, 128), "augment": augment, "num_epochs": 2}
    exec(snippet("accel.echo"), namespace)
    fresh, examples = (int(v) for v in capsys.readouterr().out.split())
    assert fresh == 2 * 128 and examples == 2 * fresh  # factor 2: every fresh example trained on twice


def test_cowclip_snippet():
    from accel.models.ctr import DeepFM

    generator = torch.Generator().manual_seed(2)
    model = DeepFM([50, 30, 20], embed_dim=4, mlp_dims=(16,), generator=generator)
    ids = torch.stack([torch.randint(0, d, (64,), generator=generator) for d in (50, 30, 20)], dim=1)
    labels = torch.randint(0, 2, (64,), generator=generator).float()
    loss = F.binary_cross_entropy_with_logits(model(ids), labels)
    before = model.embedding.table.weight.detach().clone()
    namespace = {"model": model, "steps_per_epoch": 10, "loss": loss, "ids": ids}
    exec(snippet("accel.cowclip"), namespace)
    assert isinstance(namespace["opt"], torch.optim.Optimizer)
    assert not torch.equal(before, model.embedding.table.weight)  # the step ran


def test_moe_snippet(capsys):
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(2, 16, 512, generator=generator)
    norm = nn.LayerNorm(512)
    namespace = {"h": h, "norm": norm, "task_loss": torch.tensor(0.0)}
    exec(snippet("accel.moe"), namespace)
    assert namespace["h"].shape == (2, 16, 512)
    assert namespace["loss"].ndim == 0 and namespace["loss"] > 0
    assert "dropped" in capsys.readouterr().out
