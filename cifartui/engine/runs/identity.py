"""What a checkpoint was trained on: the model's tensors and the data, so that a mismatch is named, not guessed.

A checkpoint records the model's name, class count and the name and shape of every
tensor, and the data's size and a fingerprint of its labels. Resuming or branching
compares them with what the run would load now: another model in config.json, another
checkpoint copied in, a smaller or larger CIFAR folder, or other images behind the
same name stop with a message saying what differs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch.nn as nn

from cifartui.engine.runs.checkpoint import CheckpointError


def model_identity(model: nn.Module, name: str, num_classes: int) -> dict[str, Any]:
    shapes = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    digest = hashlib.sha1(repr(shapes).encode()).hexdigest()[:16]
    return {"name": name, "classes": num_classes, "tensors": len(shapes), "layout": digest,
            "parameters": sum(p.numel() for p in model.parameters())}


def data_identity(dataset_name: str, train_labels: np.ndarray, test_labels: np.ndarray,
                  validation_images: int) -> dict[str, Any]:
    digest = hashlib.sha1()
    digest.update(np.ascontiguousarray(train_labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(test_labels, dtype=np.int64).tobytes())
    return {"dataset": dataset_name, "train_images": int(len(train_labels)), "test_images": int(len(test_labels)),
            "validation_images": int(validation_images), "labels": digest.hexdigest()[:16]}


def check_same(path: str, saved: Any, current: dict[str, Any], data_dir: str) -> None:
    """Raise CheckpointError naming what differs between a checkpoint's identity and the run's now."""
    if not isinstance(saved, dict):
        return  # checkpoints from before identities were recorded: loading the tensors still checks shapes
    model_then, model_now = saved.get("model"), current["model"]
    if isinstance(model_then, dict) and model_then != model_now:
        raise CheckpointError(
            f"{path}: holds the weights of another model: {_model_text(model_then)} in the checkpoint, "
            f"{_model_text(model_now)} in the run's config.json; the checkpoint and config.json must come "
            "from the same run")
    data_then, data_now = saved.get("data"), current["data"]
    if isinstance(data_then, dict) and data_then != data_now:
        differences = []
        for key, label in (("dataset", "dataset"), ("train_images", "training images"),
                           ("test_images", "test images"), ("validation_images", "validation images")):
            if data_then.get(key) != data_now.get(key):
                differences.append(f"{label} {_number(data_now.get(key))} now, {_number(data_then.get(key))} then")
        if not differences:
            differences.append("the same number of images but other labels")
        raise CheckpointError(
            f"{path}: the run trained on other data than it would load now ({'; '.join(differences)}; data "
            f"from {data_dir}); point --data-dir at the data it was trained on")


def _model_text(model: dict[str, Any]) -> str:
    return (f"{model.get('name')} for {model.get('classes')} classes "
            f"({_number(model.get('parameters'))} parameters)")


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


__all__ = ["model_identity", "data_identity", "check_same"]
