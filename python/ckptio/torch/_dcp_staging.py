"""The staging copy of ``dcp.async_save``: the one stall the caller sees.

Every tensor (DTensor shards included) is copied into fresh CPU memory by DCP's own
state-dict stager, one stager per save. When any tensor lives on a GPU and CUDA is
available, the copies go to pinned host memory with non-blocking device-to-host
transfers and one synchronize at the end, so the stall is the PCIe copy rather than
pageable-memory bounce buffers; DCP's default for a writer that does not stage itself
pins nothing. (That path needs a GPU; the machines that run ckptio's tests have none,
so it is written to torch's documented contract and exercised by users.)
"""

from __future__ import annotations

from typing import Any

import torch


def _has_device_tensors(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.device.type not in ("cpu", "meta")
    if isinstance(obj, dict):
        return any(_has_device_tensors(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_device_tensors(v) for v in obj)
    return False


def stage_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A CPU copy of ``state_dict`` that later training steps cannot change. Values
    keep their types (a ``torch.Size`` stays one); tensors that share storage share
    their staged copy.

    Example:
        >>> sd = {"w": torch.ones(2), "shape": torch.Size([2]), "step": 3}
        >>> staged = stage_state_dict(sd)
        >>> _ = sd["w"].add_(1)
        >>> staged["w"], type(staged["shape"]).__name__, staged["step"]
        (tensor([1., 1.]), 'Size', 3)
    """
    pinned = torch.cuda.is_available() and _has_device_tensors(state_dict)
    try:  # torch >= 2.9: the stager DCP itself uses, one per save (no storage reused
        # across saves, so a save still writing never sees the next one's copy)
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    except ImportError:
        return _stage_before_2_9(state_dict, pinned)
    stager = DefaultStager(StagingOptions(pinned, False, False, pinned))
    try:
        return stager.stage(state_dict)  # type: ignore[return-value]  # synchronous: a dict
    finally:
        stager.close()


def _stage_before_2_9(state_dict: dict[str, Any], pinned: bool) -> dict[str, Any]:
    """Older torch: its CPU state-dict copy (tuple subclasses come back as tuples)."""
    from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

    staged = _create_cpu_state_dict(state_dict, pin_memory=pinned)
    _copy_state_dict(state_dict, staged, non_blocking=pinned)
    if pinned:
        torch.cuda.synchronize()
    return staged
