"""Momentum ResNets (Sander et al., ICML 2021) with an exact memory-free backward pass."""
from .exact import FixedPointRangeError, ReconstructionError
from .momentum import MomentumNet, MomentumState

__all__ = ["MomentumNet", "MomentumState", "to_momentumnet", "FixedPointRangeError",
           "ReconstructionError"]
__version__ = "0.1.0"


def __getattr__(name):
    # the converter imports torchvision; load it only when asked for
    if name == "to_momentumnet":
        from .convert import to_momentumnet
        return to_momentumnet
    raise AttributeError(f"module 'mresnet_core' has no attribute {name!r}")
