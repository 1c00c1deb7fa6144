"""Every example in the public docstrings runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import os

import pytest

MODULES = [
    "ckptio",
    "ckptio.api",
    "ckptio.async_save",
    "ckptio.checkpoint",
    "ckptio.cli",
    "ckptio.errors",
    "ckptio._tensors",
    "ckptio._gc",
    "ckptio._tree",
    "ckptio._side_files",
    "ckptio.hf._common",
    "ckptio.hf.cli",
    "ckptio.hf.export",
    "ckptio.hf.importer",
    "ckptio.hf.keymaps",
    "ckptio.hf.peft",
    "ckptio.run",
    "ckptio._call_order",
    "ckptio._retention",
    "ckptio.cli_run",
    "ckptio._dcp_index",
    "ckptio.torch.dcp",
    "ckptio.torch._dcp_metadata",
    "ckptio.torch._dcp_staging",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write relative paths stay in tmp
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "ckptio._tensors":
        assert result.attempted > 0, f"{name} has no examples"
    assert os.getcwd() == str(tmp_path)


def test_every_public_function_has_an_example():
    import ckptio

    missing = []
    for name in ckptio.__all__:
        obj = getattr(ckptio, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            continue
        if callable(obj) and ">>>" not in (obj.__doc__ or ""):
            missing.append(name)
    assert not missing, f"public callables without an example: {missing}"
