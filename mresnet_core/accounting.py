"""Accounting for what a forward pass keeps for backward (bytes, deterministic, any device).

:func:`saved_tensors` counts every tensor autograd saves during one call, and, through
:func:`observe_held_tensors`, what a memory-free momentum stack keeps outside
``save_for_backward`` (its exact state, information buffer and replay records). The
planner (``plan.py``) sizes one layer with it; ``memory.py`` measures whole steps.
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch import nn

_HELD_OBSERVERS: contextvars.ContextVar = contextvars.ContextVar("mresnet_held_observers", default=())


@contextlib.contextmanager
def observe_held_tensors(callback: Callable[[list], None]):
    """Within the block, ``callback(tensors)`` sees the tensors each memory-free forward
    keeps for its backward pass outside ``save_for_backward`` (the exact tape), so that
    :func:`saved_tensors` can count them."""
    token = _HELD_OBSERVERS.set(_HELD_OBSERVERS.get() + (callback,))
    try:
        yield
    finally:
        _HELD_OBSERVERS.reset(token)


def observing() -> bool:
    """Whether anything observes held tensors now (else gathering them is wasted work)."""
    return bool(_HELD_OBSERVERS.get())


def report_held(tensors: list) -> None:
    """Show ``tensors``, kept by a memory-free forward for its backward, to the observers."""
    for observe in _HELD_OBSERVERS.get():
        observe(tensors)


@dataclass
class SavedTensors:
    """What one forward pass saved for backward.

    Attributes:
        nbytes: bytes of the distinct storages saved, parameters excluded.
        count: number of distinct storages counted in ``nbytes``.
        parameter_nbytes: bytes of the distinct parameter storages that were saved too
            (not part of ``nbytes``).
        output: what the forward function returned (keeps the graph alive).
    """

    nbytes: int
    count: int
    parameter_nbytes: int
    output: Any = None


def storage_key(t: torch.Tensor):
    """Identity of the memory block behind ``t`` (views of one storage share it)."""
    try:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, nested, storage-less subclasses
        return ("id", id(t)), t.numel() * t.element_size()
    if ptr == 0:  # empty, or a device without real memory (meta): key by the object
        return ("id", id(t)), storage.nbytes()
    return (t.device.type, t.device.index, ptr), storage.nbytes()


def parameter_tensors(fn, exclude) -> list:
    """The parameters to leave out of a count: those of ``exclude`` (modules and tensors),
    else of ``fn`` when it is a module or a bound method of one."""
    if exclude is None:
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        return list(owner.parameters()) if isinstance(owner, nn.Module) else []
    if isinstance(exclude, nn.Module):
        return list(exclude.parameters())
    out = []
    for item in exclude:
        out += list(item.parameters()) if isinstance(item, nn.Module) else [item]
    return out


def saved_tensors(fn: Callable, *args, exclude: nn.Module | Iterable | None = None,
                  hold: bool = True, **kwargs) -> SavedTensors:
    """Run ``fn(*args, **kwargs)`` once with autograd on; account for what it saved.

    Every tensor that autograd saves for backward during the call (through
    ``torch.autograd.graph.saved_tensors_hooks``: the inputs and outputs that built-in
    ops keep, and whatever custom ``autograd.Function``s pass to ``ctx.save_for_backward``,
    and the int64 fixed-point state, information buffer and replay records that the
    memory-free momentum stack keeps for its backward pass) is counted once per storage: views and repeated saves of one tensor
    (a ``tanh`` output that the next ``Linear`` saves again) cost their storage once,
    the whole storage (a saved view of a large tensor keeps all of it alive).

    Parameters are not activation memory and are excluded: a tensor is skipped when it
    is an ``nn.Parameter`` or shares its storage with one of the parameters of
    ``exclude`` (a module, or an iterable of modules and tensors). By default ``exclude``
    is ``fn`` itself when it is a module, or the module a bound method ``fn`` belongs to
    (``net.forward_state``); pass the model explicitly when ``fn`` is a lambda. Buffers
    (BatchNorm running statistics) are counted when saved, and so are inputs: an input
    that a layer keeps is memory the step holds.

    Limits: the result counts what was saved during the call, including saves in parts
    of the graph that ``fn`` dropped before returning (the tensors are held until the
    count is done, so a freed address cannot be counted twice); tensors saved under an
    inner ``saved_tensors_hooks`` context (activation checkpointing, CPU offloading)
    are seen by that context, not by this one; a tensor without a plain storage (sparse,
    nested) counts as ``numel * element_size``, and one on the meta device by its
    nominal storage size. The forward runs under ``torch.enable_grad()``.

    ``hold=False`` counts the same without keeping anything: autograd gets a placeholder
    instead of each saved tensor (the graph cannot be backpropagated), so the call needs
    no more memory than a forward pass without a graph; the planner sizes a layer this
    way in the middle of a training step. A storage counted earlier and freed since is
    counted again if its address comes back (weak references tell). ``output`` is None.
    """
    params = parameter_tensors(fn, exclude)
    param_keys = {storage_key(p)[0] for p in params if p.numel()}
    seen: dict = {}
    seen_params: dict = {}
    held: list = []

    alive: dict = {}  # hold=False: address -> (weak reference to the storage counted there, its number)
    occupants = itertools.count()

    def pack(t: torch.Tensor):
        key, nbytes = storage_key(t)
        is_param = isinstance(t, nn.Parameter) or key in param_keys
        if hold:
            held.append(t)
        else:
            # a weak reference to the storage itself (not to the Python tensor, which may
            # be a temporary wrapper gone at once while its storage lives on)
            earlier = alive.get(key)
            if earlier is None or earlier[0].expired():  # new, or freed and the address reused
                alive[key] = (StorageWeakRef(t.untyped_storage()), next(occupants))
            key = (key, alive[key][1])
        if is_param:
            seen_params.setdefault(key, nbytes)
        else:
            seen.setdefault(key, nbytes)
        return t if hold else None

    def unpack(t: torch.Tensor):
        return t

    def tape_held(tensors):  # what the memory-free stack keeps outside save_for_backward
        for t in tensors:
            pack(t)

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack), \
            observe_held_tensors(tape_held):
        out = fn(*args, **kwargs)
        if not hold:
            out = None
    result = SavedTensors(nbytes=sum(seen.values()), count=len(seen),
                          parameter_nbytes=sum(seen_params.values()), output=out)
    held.clear()
    return result


def saved_tensor_bytes(fn: Callable, *args, exclude: nn.Module | Iterable | None = None,
                       **kwargs) -> int:
    """Bytes saved for backward by one call ``fn(*args, **kwargs)``, parameters excluded.

    Deterministic and device independent; see :func:`saved_tensors` for exactly what is
    counted. The output (and its graph) is released before returning.
    """
    return saved_tensors(fn, *args, exclude=exclude, **kwargs).nbytes
