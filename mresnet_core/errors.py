"""The exact path's errors, shared by the torch kernels (``exact``) and the C kernels
(``exact_native``) without either importing the other; ``exact`` re-exports them."""


class FixedPointRangeError(ValueError):
    """An activation left the range the exact fixed-point arithmetic can hold."""


class ReconstructionError(RuntimeError):
    """The backward pass did not land back on the forward pass's starting point."""


NOT_REPLAYABLE = (
    "the memory-free backward pass could not rebuild the forward activations exactly: a "
    "residual function is not deterministic, or parameters or buffers were changed between "
    "forward and backward. Use memory_efficient=False for such functions."
)
