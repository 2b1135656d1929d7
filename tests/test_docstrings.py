"""Every docstring example in the four method modules runs and prints what it says it prints (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

METHOD_MODULES = ["accel.infobatch", "accel.echo", "accel.cowclip", "accel.moe"]


@pytest.mark.parametrize("name", METHOD_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = [test for test in doctest.DocTestFinder().find(module) if test.examples]
    assert name in {test.name for test in tests}, f"{name}'s module docstring has no runnable usage example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with torch.random.fork_rng():  # the examples seed torch's default generator; the test session's is restored
        for test in tests:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
