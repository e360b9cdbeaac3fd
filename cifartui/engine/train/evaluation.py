"""Evaluation of a model on images held on the device, and the check that torchrun's replicas agree.

Pure functions of the model and the data: no run directory, no events.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F


class EvaluationInterrupted(Exception):
    """A stop was requested while the run evaluated; it ends as stopped, resumable."""


def evaluation_batch_size(requested: int, training_batch: int, device: torch.device) -> int:
    """The batch evaluation runs in: `train.eval_batch_size`, on the CPU at most the training batch.

    Without gradients a forward pass keeps a few activations alive at a time, a training
    step all of them for the backward pass, so on the CPU an evaluation batch no larger
    than the training batch never raises the process's peak memory (ResNet-18's
    activations for 1,000 images at once came to about 1 GB more than its training steps
    at batch 128 held). Loss and accuracy are sums over images, so the batch does not
    change them beyond rounding. On a GPU the requested batch stands: larger batches keep
    it busy, and its memory is the caching allocator's, not the process's.
    """
    if device.type == "cpu":
        return max(1, min(requested, training_batch))
    return requested


@torch.no_grad()
def evaluate(model: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
             labels: torch.Tensor, *, classes: int, batch_size: int, flip: bool, channels_last: bool,
             autocast: Callable[[], ContextManager[Any]],
             stop_requested: Callable[[], bool] | None = None) -> tuple[float, float, float]:
    """Loss, top-1 and top-5 (percent) without augmentation (with `flip`, averaged with the mirror image).

    `stop_requested`, when given, is asked between batches; True raises EvaluationInterrupted.
    """
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=images.device)
    k = min(5, classes)
    for start in range(0, len(labels), batch_size):
        if stop_requested is not None and stop_requested():
            raise EvaluationInterrupted
        x = preprocess(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x).float()
            if flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        top = logits.topk(k, dim=1).indices
        totals += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                               (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
    loss_sum, top1, top5 = totals.tolist()  # sync point: once per evaluation
    count = max(len(labels), 1)
    return loss_sum / count, 100.0 * top1 / count, 100.0 * top5 / count


def replicas_identical(model: torch.nn.Module, dist: Any, device: torch.device) -> bool:
    """Whether every process of a torchrun job ends with the same weights, as averaged gradients promise."""
    with torch.no_grad():
        flat = torch.cat([t.detach().double().flatten() for t in model.state_dict().values()
                          if t.is_floating_point()])
        checksum = torch.stack([flat.sum(), (flat * flat).sum()]).to(device)
        lowest, highest = checksum.clone(), checksum.clone()
        dist.all_reduce_(lowest, torch.distributed.ReduceOp.MIN)
        dist.all_reduce_(highest, torch.distributed.ReduceOp.MAX)
        return bool(torch.equal(lowest, highest))


__all__ = ["EvaluationInterrupted", "evaluate", "evaluation_batch_size", "replicas_identical"]
