"""Record what a chapter's long computations return, and hand it back later without computing it again.

A chapter's training loops live in functions of ``accel.experiments.*`` marked ``@replayable``. While a chapter runs,
each call of such a function is recorded (under the function's name and how many times it has been called before),
and ``accel.book`` writes the recordings into the results file under ``"replay"``. A later run started with
``RESULTS_FROM=<that results file>`` is handed the recorded values instead: the chapter draws its tables, figures and
verdicts from a GPU run, say, on a CPU runtime, in seconds.

The encoding is JSON with a few tags, so a results file stays a readable text file and loading one runs no code:
dataclasses (only classes defined in accel), tuples, dicts with non-string keys, non-finite floats and NumPy arrays
(raw bytes, zlib-compressed, base64; exact) each get a tag.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib
import math
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Session", "active", "decode", "encode", "replayable"]


class Session:
    """Where this chapter run's ``@replayable`` calls go: recorded (``record``: called with key and encoded value), and
    handed back from ``source`` (a dict of encoded values from a results file) when replaying."""

    def __init__(self, record: Callable[[str, Any], None] | None = None, source: dict[str, Any] | None = None,
                 source_name: str = "the recorded run"):
        self.record, self.source, self.source_name = record, source, source_name
        self.calls: Counter[str] = Counter()
        self.depth = 0

    @property
    def replaying(self) -> bool:
        return self.source is not None


_session = Session()


def active() -> Session:
    """The session this process's chapter is in (a fresh, recording-nothing one until ``begin``)."""
    return _session


def begin(record: Callable[[str, Any], None] | None = None, source: dict[str, Any] | None = None,
          source_name: str = "the recorded run") -> Session:
    """Start a chapter run's session (``accel.book.start`` calls this); forgets the previous one's call counts."""
    global _session
    _session = Session(record, source, source_name)
    return _session


def replayable(fn: Callable) -> Callable:
    """Mark a long computation whose result a chapter shows: recorded when run, handed back when replaying. Calls made
    inside another replayable call are neither recorded nor replayed on their own (the outer call covers them)."""
    name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        session = _session
        if session.depth:
            return fn(*args, **kwargs)
        key = f"{name}#{session.calls[name]}"
        session.calls[name] += 1
        if session.replaying:
            if key not in session.source:
                raise KeyError(f"{session.source_name} holds no recorded result for {key}; it holds "
                               f"{sorted(session.source)}. It was recorded by other code or other parameters: "
                               "re-run the chapter without RESULTS_FROM")
            return decode(session.source[key])
        session.depth += 1
        try:
            value = fn(*args, **kwargs)
        finally:
            session.depth -= 1
        if session.record is not None:
            session.record(key, encode(value))
        return value

    wrapper.replay_name = name
    return wrapper


def encode(value: Any) -> Any:
    """``value`` as JSON-writable data that ``decode`` turns back into an equal value. Raises TypeError naming the type
    it cannot encode."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype == object:
            raise TypeError("Invalid value to record: a NumPy array of Python objects; use a numeric array or a list")
        return {"__ndarray__": base64.b64encode(zlib.compress(array.tobytes(), 6)).decode("ascii"),
                "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, np.generic):
        return encode(value.item())
    if type(value).__module__.startswith("torch") and hasattr(value, "numpy"):
        return {"__tensor__": encode(value.detach().cpu().numpy())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith("accel."):
            raise TypeError(f"Invalid value to record: dataclass {cls.__module__}.{cls.__qualname__} is not accel's")
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise TypeError(f"Invalid value to record: {type(value).__module__}.{type(value).__qualname__} cannot be encoded; "
                    "return dataclasses, NumPy arrays, numbers, strings and lists, tuples or dicts of them")


def decode(data: Any) -> Any:
    """The value ``encode`` encoded. Only classes defined in accel are constructed; nothing else is imported."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__float__" in data:
        return float(data["__float__"])
    if "__ndarray__" in data:
        raw = zlib.decompress(base64.b64decode(data["__ndarray__"]))
        return np.frombuffer(raw, dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if "__tensor__" in data:
        import torch

        return torch.from_numpy(decode(data["__tensor__"]))
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__items__" in data:
        return {_hashable(decode(k)): decode(v) for k, v in data["__items__"]}
    if "__dataclass__" in data:
        module_name, qualname = data["__dataclass__"].split(":")
        if not module_name.startswith("accel."):
            raise ValueError(f"Invalid recorded value: class {data['__dataclass__']!r} is not accel's")
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"Invalid recorded value: {data['__dataclass__']!r} is not a dataclass")
        value = cls.__new__(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        for key, field_value in data["fields"].items():
            if key in fields:
                object.__setattr__(value, key, decode(field_value))
        for f in dataclasses.fields(cls):  # a field added since the recording: its default
            if f.name not in data["fields"]:
                if f.default is not dataclasses.MISSING:
                    object.__setattr__(value, f.name, f.default)
                elif f.default_factory is not dataclasses.MISSING:
                    object.__setattr__(value, f.name, f.default_factory())
                else:
                    raise ValueError(f"Invalid recorded value: {data['__dataclass__']} lacks field {f.name!r}")
        return value
    return {k: decode(v) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key
