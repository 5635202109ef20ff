"""Every private PyTorch API this package relies on, imported in one place.

PyTorch may move or rename these between releases. They are looked up here and nowhere
else; a missing one does not break ``import mresnet_core``: using it raises an
ImportError that names it, and :func:`check` (run by the test suite) lists all of them.

* pytree flattening of the extra arguments of a momentum stack (``torch.utils._pytree``);
* the mask helpers that ``nn.TransformerEncoder/Decoder.forward`` use, so that the
  converted encoder/decoder canonicalises masks exactly as the original does;
* ``_ConvNd``, the base class of every convolution, to see a shape-changing block, and
  ``_BatchNorm``, of every batch norm, to freeze them (both fall back to the public classes);
* the profiler's event tree (allocation addresses) behind the CPU step-memory peak;
* the generated autograd node classes (``torch._C._functions``), to see whether the
  node that made a tensor saved it (``node_saves_its_output``).
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

_MISSING: dict = {}


def _lookup(module: str, name: str, why: str):
    """``module.name``, or a stand-in that raises a clear ImportError when called."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        _MISSING[f"{module}.{name}"] = why

        def unavailable(*args, **kwargs):
            raise ImportError(f"torch {torch.__version__} has no {module}.{name}, which mresnet_core "
                              f"uses for {why}; update mresnet_core/_torch_private.py")
        return unavailable


tree_flatten = _lookup("torch.utils._pytree", "tree_flatten", "the extra arguments of a momentum stack")
tree_unflatten = _lookup("torch.utils._pytree", "tree_unflatten", "the extra arguments of a momentum stack")
canonical_mask = _lookup("torch.nn.functional", "_canonical_mask", "Transformer masks")
none_or_dtype = _lookup("torch.nn.functional", "_none_or_dtype", "Transformer masks")
detect_is_causal_mask = _lookup("torch.nn.modules.transformer", "_detect_is_causal_mask", "Transformer masks")
get_seq_len = _lookup("torch.nn.modules.transformer", "_get_seq_len", "Transformer masks")
_event_type = _lookup("torch._C._profiler", "_EventType", "CPU step-memory peaks")

try:
    from torch.nn.modules.conv import _ConvNd as ConvNd
except ImportError:  # the public classes cover every convolution torch ships
    _MISSING["torch.nn.modules.conv._ConvNd"] = "seeing shape-changing blocks (public classes used)"
    ConvNd = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

try:
    from torch.nn.modules.batchnorm import _BatchNorm as BatchNormBase
except ImportError:  # the public classes cover every batch norm torch ships
    _MISSING["torch.nn.modules.batchnorm._BatchNorm"] = "freezing BatchNorm layers (public classes used)"
    BatchNormBase = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


try:
    from torch._C import _functions as _generated_nodes
except ImportError:
    _generated_nodes = None
    _MISSING["torch._C._functions"] = "freeing a recomputed residual's output early (kept instead)"
_SAVED_OUTPUTS: dict = {}


def node_saves_its_output(node, output_nr: int) -> bool:
    """Whether autograd node ``node`` keeps its output ``output_nr`` for backward (as
    TanhBackward0 keeps tanh's result), from its class: the nodes torch generates expose
    what they save as ``_saved_*`` attributes, outputs as ``_saved_result`` (or
    ``_saved_result<k>``). Any other node (custom functions, C++ nodes) counts as keeping it."""
    key = (type(node), output_nr)
    known = _SAVED_OUTPUTS.get(key)
    if known is None:
        cls = type(node)
        generated = _generated_nodes is not None and getattr(_generated_nodes, cls.__name__, None) is cls
        known = not generated or hasattr(cls, "_saved_result") or hasattr(cls, f"_saved_result{output_nr}")
        _SAVED_OUTPUTS[key] = known
    return known


def allocation_events(prof) -> list:
    """(time_ns, order, address, signed bytes) of each CPU allocation (+) and free (-)
    recorded by a finished ``torch.profiler.profile(profile_memory=True)``.

    Read from the profiler's event tree, which carries each block's address (what the
    profiler's own memory timeline uses); where this torch has no such tree, from the
    flat event list, with address None.
    """
    results = prof.profiler.kineto_results
    out = []
    if "torch._C._profiler._EventType" not in _MISSING and hasattr(results, "experimental_event_tree"):
        stack = list(results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.tag == _event_type.Allocation:
                fields = node.extra_fields
                if fields.device.type == "cpu":
                    out.append((node.start_time_ns, len(out), int(fields.ptr), int(fields.alloc_size)))
        return out
    for event in results.events():
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
            out.append((event.start_ns(), len(out), None, int(event.nbytes())))
    return out


def check() -> None:
    """Raise ImportError naming every private API that this torch no longer provides."""
    if _MISSING:
        listed = "; ".join(f"{name} ({why})" for name, why in _MISSING.items())
        raise ImportError(f"torch {torch.__version__} moved private APIs that mresnet_core uses: "
                          f"{listed}. Update mresnet_core/_torch_private.py")
