"""Every docstring example in bitkeras runs (on tiny models; downloads are marked +SKIP)."""

import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import bitkeras

MODULES = sorted(info.name for info in pkgutil.walk_packages(bitkeras.__path__, "bitkeras.")
                 if info.name not in ("bitkeras.__main__", "bitkeras.saved_models"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, extraglobs={"np": np}, report=True,
                                optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failed == 0, f"{failed} docstring example(s) of {name} failed (printed above)"


def test_the_examples_are_found():
    examples = sum(len(test.examples) for name in MODULES
                   for test in doctest.DocTestFinder().find(
                       importlib.import_module(name)))
    assert examples >= 20
