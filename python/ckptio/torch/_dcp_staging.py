"""The staging copy of ``dcp.async_save``: the one stall the caller sees.

Every tensor (DTensor shards included) is copied into fresh CPU memory; when any lives
on a GPU and CUDA is available, the copies go to pinned host memory with non-blocking
device-to-host transfers and one synchronize at the end, so the stall is the PCIe copy
rather than pageable-memory bounce buffers. (This path needs a GPU; the machines that
run ckptio's tests have none, so it is written to torch's documented contract and
exercised by users.) Non-tensor values are kept as they are, as DCP's own stager does.
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
    """A CPU copy of ``state_dict`` that later training steps cannot change.

    Example:
        >>> sd = {"w": torch.ones(2), "step": 3}
        >>> staged = stage_state_dict(sd)
        >>> _ = sd["w"].add_(1)
        >>> staged["w"], staged["step"]
        (tensor([1., 1.]), 3)
    """
    from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

    pinned = torch.cuda.is_available() and _has_device_tensors(state_dict)
    staged = _create_cpu_state_dict(state_dict, pin_memory=pinned)
    _copy_state_dict(state_dict, staged, non_blocking=pinned)
    if pinned:
        torch.cuda.synchronize()
    return staged
