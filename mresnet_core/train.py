"""Training loops the notebooks share, with progress bars and resumable checkpoints."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm


def train_steps(model: torch.nn.Module, make_batch: Callable[[int], tuple], loss_fn: Callable,
                optimizer: torch.optim.Optimizer, steps: int, *, scheduler=None,
                checkpoint: str | Path | None = None, desc: str = "training",
                progress: bool = True) -> list[float]:
    """Run ``steps`` optimisation steps on fresh batches; return the loss of each step.

    ``make_batch(step)`` returns (inputs, targets); ``loss_fn(model(inputs), targets)``.
    With ``checkpoint``, a finished run is loaded instead of retrained (same ``steps``),
    and the model, optimizer, scheduler and losses are saved when training ends.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("steps") == steps:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            return list(saved["losses"])
    model.train()
    losses = []
    # stdout, not stderr: executed notebooks must stay free of stderr output
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0, file=sys.stdout)
    for step in bar:
        inputs, targets = make_batch(step)
        loss = loss_fn(model(inputs), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"steps": steps, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "losses": losses}, path)
    return losses
