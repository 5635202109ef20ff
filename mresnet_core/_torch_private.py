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
  node that made a tensor saved it (``node_saves_its_output``), and the storage
  reference count (``torch._C._storage_Use_Count``), to see that nothing else holds a
  tensor's memory (``sole_owner``): together they decide whether a recomputed residual
  may be freed early; each is checked on a small graph before it is trusted
  (``check_freeing``), and without them nothing is freed;
* the state-dict hooks of torch < 2.5 (``register_state_dict_hooks``), with which a
  converted model saves and loads under the original model's names;
* the autograd engine's entry point (``torch.autograd.graph._engine_run_backward``) for
  one layer's vector-Jacobian product (``vjp``; ``torch.autograd.grad`` where it is gone);
* tensor internals read as they are: a module's own ``_parameters``/``_buffers``
  (``parameters_and_buffers``), version counters (``version_of``), a view's base
  (``is_view``) and freeing a storage in place (``free_storage``).
"""
from __future__ import annotations

import functools
import importlib
import sys

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
_engine_backward = _lookup("torch.autograd.graph", "_engine_run_backward",
                           "one layer's vector-Jacobian product without torch.autograd.grad's argument handling")


def vjp(output, inputs: list, cotangent: torch.Tensor) -> tuple:
    """``torch.autograd.grad(output, inputs, cotangent, allow_unused=True)``, ``output`` a
    tensor or a GradientEdge. Where that is all grad would do (plain tensors: no
    ``__torch_function__`` to defer to) the engine is called directly, which grad itself
    ends with: its Python argument handling costs some 30 us, once per layer of the
    memory-free backward. The engine checks the cotangent's shape as grad does."""
    tensors = (cotangent, *inputs, *((output,) if isinstance(output, torch.Tensor) else ()))
    if "torch.autograd.graph._engine_run_backward" in _MISSING or torch.overrides.has_torch_function(tensors):
        return torch.autograd.grad(output, inputs, cotangent, allow_unused=True)
    return _engine_backward((output,), (cotangent,), False, False, tuple(inputs), True, accumulate_grad=False)

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
    ``_saved_result<k>``). Any other node (custom functions, C++ nodes) counts as keeping
    it, and so does every node when :func:`check_freeing` finds the rule broken."""
    if not check_freeing():
        return True
    return _class_saves_output(node, output_nr)


def _class_saves_output(node, output_nr: int) -> bool:
    key = (type(node), output_nr)
    known = _SAVED_OUTPUTS.get(key)
    if known is None:
        cls = type(node)
        generated = _generated_nodes is not None and getattr(_generated_nodes, cls.__name__, None) is cls
        known = not generated or hasattr(cls, "_saved_result") or hasattr(cls, f"_saved_result{output_nr}")
        _SAVED_OUTPUTS[key] = known
    return known


PUBLIC_STATE_DICT_HOOKS = all(hasattr(nn.Module, name) for name in (
    "register_state_dict_post_hook", "register_load_state_dict_pre_hook"))  # torch >= 2.5


def register_state_dict_hooks(module: nn.Module, save, load, public: bool | None = None) -> None:
    """``save`` as ``module``'s state_dict post-hook, ``load`` as its load_state_dict
    pre-hook (both called with the module first): the public methods from torch 2.5,
    the private ones of the same behaviour before (``public`` forces one, for tests)."""
    if PUBLIC_STATE_DICT_HOOKS if public is None else public:
        module.register_state_dict_post_hook(save)
        module.register_load_state_dict_pre_hook(load)
    else:  # torch 2.2 - 2.4
        module._register_state_dict_hook(save)
        module._register_load_state_dict_pre_hook(load, with_module=True)


def parameters_and_buffers(module: nn.Module) -> tuple:
    """(list(module.parameters()), list(module.buffers())) in one walk of its modules
    (each module's own ``_parameters`` and ``_buffers``: half the cost of two walks)."""
    params, buffers, seen_params, seen_buffers = [], [], set(), set()
    for m in module.modules():
        for members, out, seen in ((m._parameters, params, seen_params), (m._buffers, buffers, seen_buffers)):
            for t in members.values():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
    return params, buffers


def version_of(t: torch.Tensor) -> int:
    """The version counter of ``t`` (bumped by every in-place change of it or its views)."""
    return t._version


def is_view(t: torch.Tensor) -> bool:
    """Whether ``t`` is a view of another tensor's memory."""
    return t._base is not None


def free_storage(t: torch.Tensor) -> None:
    """Free the memory of ``t`` now (its shape and graph stay); only for a tensor whose
    memory nothing else holds (:func:`sole_owner`) or that this package made itself."""
    t.untyped_storage().resize_(0)


def _counts(t: torch.Tensor) -> tuple:
    """(references to t's storage, Python references to t), as seen one call deep."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata), sys.getrefcount(t)


def _within(counts: tuple, held: int) -> bool:
    """Whether ``_counts`` taken one call deep are those of a tensor held by ``held`` names."""
    storage_base, python_base = _baselines()
    return counts[0] <= storage_base and counts[1] <= python_base + held - 1


@functools.lru_cache(maxsize=None)
def _baselines() -> tuple:
    """``_counts`` of a fresh tensor that one local name holds, taken one call deep."""
    def one_call_deep(t):
        return _counts(t)

    def probe():
        t = torch.empty(4)
        return one_call_deep(t)
    return probe()


def sole_owner(t: torch.Tensor, held: int = 1) -> bool:
    """Whether ``held`` names in the caller are all that hold ``t`` and its memory: no
    other Python reference to the tensor (a hook that kept it, a list), no other tensor
    on its storage (a view, ``detach()``), and ``t`` itself not a view. False whenever
    :func:`check_freeing` could not confirm these counts on this torch."""
    if not check_freeing() or is_view(t) or type(t) is not torch.Tensor:
        return False
    return _within(_counts(t), held)


def _as_is(t):
    """A saved-tensor hook that keeps the tensor as it is."""
    return t


@functools.lru_cache(maxsize=None)
def check_freeing() -> bool:
    """Whether the rules behind freeing a recomputed residual early hold on this torch,
    tried on a small graph: tanh's node keeps its output, a matrix product's does not,
    a tensor held by one name is its sole owner, and one also held by a list, a view or
    a ``detach()`` is not. False (nothing is ever freed early) if any of it fails."""
    def alone(u):  # as deep as sole_owner's count
        return _within(_counts(u), 1)

    try:
        if _generated_nodes is None:
            return False
        # first asked from inside a no_grad walk, maybe one whose saved tensors are being
        # counted (accounting.saved_tensors): the probe's own go to an inner hook
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autograd.graph.saved_tensors_hooks(_as_is, _as_is)):
            x = torch.ones(2, 2, requires_grad=True)
            kept, product = torch.tanh(x), x @ x
        if not _class_saves_output(kept.grad_fn, 0) or _class_saves_output(product.grad_fn, 0):
            return False
        t = torch.empty(4)
        if not alone(t):
            return False
        holders: list = []
        for hold in (holders.append, lambda u: holders.append(u.detach()), lambda u: holders.append(u[1:])):
            hold(t)
            if alone(t):
                return False
            holders.clear()
        return alone(t)
    except Exception:  # noqa: BLE001 - anything unexpected: never free early
        return False


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
    """Raise ImportError naming every private API that this torch no longer provides, or
    whose behaviour the early freeing relies on no longer holds (:func:`check_freeing`)."""
    if not check_freeing() and "torch._C._functions" not in _MISSING:
        _MISSING["freeing a recomputed residual early"] = ("node and reference counts no longer behave as "
                                                           "expected (nothing is freed early)")
    if _MISSING:
        listed = "; ".join(f"{name} ({why})" for name, why in _MISSING.items())
        raise ImportError(f"torch {torch.__version__} moved private APIs that mresnet_core uses: "
                          f"{listed}. Update mresnet_core/_torch_private.py")
