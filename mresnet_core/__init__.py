"""Momentum ResNets (Sander et al., ICML 2021) with an exact memory-free backward pass."""
from .exact import FixedPointRangeError, ReconstructionError
from .convert import to_momentumnet
from .momentum import MomentumNet, MomentumState

__all__ = ["MomentumNet", "MomentumState", "to_momentumnet", "FixedPointRangeError",
           "ReconstructionError"]
__version__ = "0.1.0"

