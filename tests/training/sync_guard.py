"""A CPU-runnable check that code makes no host-device synchronisation (issue 14, item 3).

Run the code on the `meta` device, PyTorch's device without data, standing in for the GPU: every
tensor op still goes through the dispatcher with its real shapes, dtypes and devices, so a
`TorchDispatchMode` sees each one. What stalls a GPU shows as one of:

- reading a device value on the host: `.item()`, `bool(t)`, `int(t)`, `.tolist()`, a device-to-host
  copy (`aten._local_scalar_dense`, `_to_copy` / `copy_` to the CPU);
- ops whose output shape depends on the data (`nonzero`, `masked_select`, boolean-mask indexing,
  `unique`, `repeat_interleave` without `output_size`), which read a count back to size the result;
- a host-to-device copy: a tensor built on the CPU and shipped each step. Those are recorded with
  the file and line that made them, so a test can allow the one intended copy (the augmentation
  parameters, drawn on the CPU from the seeded generator) and reject any other.

On a real GPU, `torch.cuda.set_sync_debug_mode("error")` checks the same thing from the driver's
side; the GPU-only tests use that.
"""

from __future__ import annotations

import traceback
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose output size depends on tensor values: the host must learn it before allocating.
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                  aten.unique_consecutive.default, aten.repeat_interleave.Tensor, aten.equal.default,
                  aten.is_nonzero.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _devices(value) -> list[torch.device]:
    if isinstance(value, torch.Tensor):
        return [value.device]
    if isinstance(value, (list, tuple)):
        return [d for v in value for d in _devices(v)]
    return []


def _origin() -> str:
    """file:line of the innermost frame in hpsearch or objectives (what made the op)."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename.replace("\\", "/")
        if "/hpsearch/" in name or "/objectives/" in name:
            return f"{name.rsplit('/', 2)[-2]}/{name.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class HostSync(AssertionError):
    """Raised at the first op that would make the host wait for the device."""


class HostSyncGuard(TorchDispatchMode):
    """Raises HostSync at any host sync in the code run inside it, and records its host-to-device
    copies (`uploads`, as (origin, shape)). Use with tensors on `meta` (or any non-CPU device)."""

    def __init__(self):
        super().__init__()
        self.uploads: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_device = any(d.type != "cpu" for d in _devices(list(args)) + _devices(list(kwargs.values())))
        if func is aten._local_scalar_dense.default and on_device:
            raise HostSync(f"{func} (a device value read on the host) at {_origin()}")
        if func in DATA_DEPENDENT and on_device:
            raise HostSync(f"{func} (data-dependent output size) at {_origin()}")
        if func in INDEXING and on_device and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ()):
            raise HostSync(f"{func} with a boolean mask (calls nonzero) at {_origin()}")
        if func is aten._to_copy.default:
            self._copy(args[0].device, torch.device(kwargs.get("device") or args[0].device), args[0].shape)
        elif func is aten.copy_.default:
            self._copy(args[1].device, args[0].device, args[1].shape)
        return func(*args, **kwargs)

    def _copy(self, source: torch.device, target: torch.device, shape) -> None:
        if source.type != "cpu" and target.type == "cpu":
            raise HostSync(f"device-to-host copy of {tuple(shape)} at {_origin()}")
        if source.type == "cpu" and target.type != "cpu":
            self.uploads.append((_origin(), tuple(shape)))
