"""What a trained model gets right and wrong on the test set, and predictions for new images.

`inspect_run` loads a run's checkpoint (best or last), rebuilds the test split and the
preprocessing exactly as training did, and returns plain data: the confusion matrix
(rows = true class), top-1 and top-5, per-class and per-superclass accuracy, the most
confused pairs and the most confident mistakes. `predict_images` classifies image files
of any size, resized to 32x32 as the seeds did with their own photographs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cifartui.config import RunConfig
from cifartui.engine.train.augment import Preprocessor
from cifartui.engine.runs.checkpoint import CheckpointError, load_checkpoint
from cifartui.engine.train.data import Dataset, load_dataset, split_validation
from cifartui.engine.train.models import build_model
from cifartui.engine.runs.folders import RunDirError, read_config


class InspectError(ValueError):
    """The run cannot be inspected as asked; the message names the file or value."""


@dataclass
class Inspection:
    run_dir: Path
    checkpoint: str
    step: int
    class_names: tuple[str, ...]
    superclass_names: tuple[str, ...]
    superclass_of: tuple[int, ...]
    confusion: np.ndarray  # counts, rows = true class, columns = predicted class
    top1: float
    top5: float
    labels: np.ndarray  # true class of each test image
    predictions: np.ndarray
    confidence: np.ndarray  # probability of the predicted class
    images: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3, 32, 32), np.uint8))

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(1)
        return np.where(totals > 0, 100.0 * np.diag(self.confusion) / np.maximum(totals, 1), np.nan)

    def superclass_confusion(self) -> np.ndarray | None:
        """The confusion matrix summed into superclasses (CIFAR-100), or None."""
        if not self.superclass_of:
            return None
        membership = np.eye(len(self.superclass_names), dtype=np.int64)[list(self.superclass_of)]  # class x super
        return membership.T @ self.confusion @ membership

    def taken_for(self, true_class: int) -> str:
        """"name (count)" of the class this one is most often mistaken for; "" when never."""
        row = self.confusion[true_class].copy()
        row[true_class] = 0
        return f"{self.class_names[int(row.argmax())]} ({int(row.max())})" if row.max() else ""

    def classes_in_superclass(self, superclass: int) -> list[int]:
        return [c for c, s in enumerate(self.superclass_of) if s == superclass]

    def most_confused(self, count: int = 10) -> list[tuple[int, int, int]]:
        """(true, predicted, images) for the largest off-diagonal counts."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None)[::-1][:count]
        pairs = [(int(i // off.shape[1]), int(i % off.shape[1])) for i in order]
        return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]

    def confident_mistakes(self, count: int = 12) -> list[int]:
        """Test indices of the wrong predictions the model was surest of."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        return wrong[np.argsort(-self.confidence[wrong], kind="stable")][:count].tolist()

    def to_json(self) -> dict[str, Any]:
        per_class = self.per_class_accuracy
        data: dict[str, Any] = {
            "run_dir": str(self.run_dir), "checkpoint": self.checkpoint, "step": self.step,
            "test_images": int(self.confusion.sum()), "test_top1": self.top1, "test_top5": self.top5,
            "classes": list(self.class_names),
            "per_class_accuracy": {name: None if np.isnan(a) else float(a)
                                   for name, a in zip(self.class_names, per_class)},
            "confusion_matrix": self.confusion.tolist(),
            "most_confused": [{"true": self.class_names[t], "predicted": self.class_names[p], "images": n}
                              for t, p, n in self.most_confused()],
        }
        supers = self.superclass_confusion()
        if supers is not None:
            totals = supers.sum(1)
            data["superclasses"] = list(self.superclass_names)
            data["superclass_of"] = {self.class_names[c]: self.superclass_names[s]
                                     for c, s in enumerate(self.superclass_of)}
            data["per_superclass_accuracy"] = {
                name: float(100.0 * supers[i, i] / totals[i]) if totals[i] else None
                for i, name in enumerate(self.superclass_names)}
            data["superclass_confusion_matrix"] = supers.tolist()
        return data


@dataclass
class LoadedModel:
    config: RunConfig
    model: torch.nn.Module
    preprocess: Preprocessor
    dataset: Dataset
    device: torch.device
    step: int
    checkpoint: str

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 1000,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Softmax over classes for uint8 NCHW images, with the run's mirror averaging if it used it.

        `progress(done, total)` is called after each batch.
        """
        out = []
        for start in range(0, len(images), batch_size):
            x = self.preprocess(images[start:start + batch_size].to(self.device))
            logits = self.model(x).float()
            if self.config.train.test_time_flip:
                logits = (logits + self.model(x.flip(3)).float()) / 2
            out.append(torch.softmax(logits, 1).cpu())
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return torch.cat(out) if out else torch.zeros(0, self.dataset.num_classes)


def load_trained(run_dir: Path, *, checkpoint: str = "best", data_dir: Path | None = None,
                 device: str = "cpu") -> LoadedModel:
    """The run's model from checkpoints/{best,last}.pt, its data and its fitted preprocessing."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise InspectError(f"--checkpoint must be best or last, not '{checkpoint}'")
    config = read_config(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.pt"  # a run without validation keeps only last.pt
    if not path.is_file():
        raise RunDirError(f"{path}: missing; the run has no checkpoint yet")
    state = load_checkpoint(path)
    weights, step = state.get("model"), _checkpoint_step(state)
    if not isinstance(weights, dict) or step is None:
        raise CheckpointError(f"{path}: not a complete cifartui checkpoint (no model weights or step)")
    dataset = load_dataset(config.dataset, data_dir)
    train_index, _ = split_validation(len(dataset.train_labels), config.dataset.val_fraction, config.train.seed)
    torch_device = torch.device(device)
    preprocess = Preprocessor(config.augment.preprocess, config.augment.zca_epsilon)
    preprocess.fit(torch.from_numpy(np.ascontiguousarray(dataset.train_images[train_index])), config.train.seed)
    preprocess.to(torch_device)
    model = build_model(config.model, dataset.num_classes)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: its weights do not fit the model {run_dir / 'config.json'} describes ('{config.model.name}', "
            f"{dataset.num_classes} classes): {first_line}") from None
    model.to(torch_device).eval()
    return LoadedModel(config, model, preprocess, dataset, torch_device, step, path.stem)


def _checkpoint_step(state: dict[str, Any]) -> int | None:
    progress = state.get("progress")
    step = progress.get("step") if isinstance(progress, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def inspect_run(run_dir: Path, *, checkpoint: str = "best", data_dir: Path | None = None,
                device: str = "cpu", batch_size: int = 1000,
                progress: Callable[[str, int, int], None] | None = None) -> Inspection:
    """The test set evaluated with a run's checkpoint. `progress(phase, done, total)` reports as it goes."""
    if progress is not None:
        progress("loading the checkpoint and the test set", 0, 0)
    loaded = load_trained(run_dir, checkpoint=checkpoint, data_dir=data_dir, device=device)
    dataset = loaded.dataset
    images = torch.from_numpy(np.ascontiguousarray(dataset.test_images))
    probabilities = loaded.probabilities(
        images, batch_size, None if progress is None else lambda done, total: progress("evaluating the test set",
                                                                                        done, total))
    labels = dataset.test_labels.astype(np.int64)
    k = min(5, dataset.num_classes)
    top = probabilities.topk(k, dim=1).indices.numpy()
    predictions = top[:, 0]
    classes = dataset.num_classes
    confusion = np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)
    count = max(len(labels), 1)
    return Inspection(
        run_dir=Path(run_dir), checkpoint=loaded.checkpoint, step=loaded.step, class_names=dataset.class_names,
        superclass_names=dataset.superclass_names, superclass_of=dataset.superclass_of, confusion=confusion,
        top1=100.0 * float((predictions == labels).sum()) / count,
        top5=100.0 * float((top == labels[:, None]).any(1).sum()) / count, labels=labels,
        predictions=predictions, confidence=probabilities.max(1).values.numpy(), images=dataset.test_images)


def read_image(path: Path) -> np.ndarray:
    """An image file of any size as a 3x32x32 uint8 array (RGB, resized with antialiasing).

    Files are untrusted: any way PIL fails on one (a truncated or corrupted file, a
    format it cannot decode, a decompression bomb) is an InspectError naming it.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Above PIL's pixel limit it only warns (and decodes it all); such a file is refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InspectError(f"{path}: {width}x{height} pixels is too large to read "
                                       f"(at most {MAX_IMAGE_PIXELS:,} pixels)")
                image = image.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
                return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    except InspectError:
        raise
    except FileNotFoundError:
        raise InspectError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InspectError(f"{path}: a folder, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InspectError(f"{path}: refused: {error}") from None
    except Exception as error:  # noqa: BLE001 - PIL's decoders fail on damaged files in many ways
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InspectError(f"{path}: not an image file PIL can read (truncated or corrupted?): {detail}") from None


# An image above this many pixels is refused before it is decoded (PIL's own limit, 89 million,
# only warns; a PNG of a few kilobytes can claim 20,000 x 20,000).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def predict_images(loaded: LoadedModel, paths: list[Path], top: int = 5) -> list[list[tuple[str, float]]]:
    """For each file, the `top` most likely classes with their probabilities."""
    images = torch.from_numpy(np.stack([read_image(Path(p)) for p in paths]))
    probabilities = loaded.probabilities(images)
    k = min(top, loaded.dataset.num_classes)
    values, indices = probabilities.topk(k, dim=1)
    names = loaded.dataset.class_names
    return [[(names[i], float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, indices)]


__all__ = ["Inspection", "InspectError", "LoadedModel", "inspect_run", "load_trained", "predict_images",
           "read_image"]
