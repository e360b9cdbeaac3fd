"""Atomic, complete checkpoints, loaded only as plain tensors and values.

Writing goes to a temporary file in the same directory, which is flushed, fsynced
and renamed over the old file with `os.replace`: a crash or a full disk at any
moment leaves the previous checkpoint intact. Loading always passes
`weights_only=True` to `torch.load`, so a file whose pickle would build arbitrary
objects (and could run code) is refused, whatever the environment says.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint cannot be written, read or trusted; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # A path, not an open file: torch then writes through its own C++ file. Given a Python
        # file, a KeyboardInterrupt raised inside one of its write callbacks (a second Ctrl-C)
        # closes the file under torch's writer, whose destructor then writes to it and aborts
        # the process (std::terminate) instead of leaving with 130.
        try:
            torch.save(state, temporary)
        except RuntimeError as error:
            behind = _write_error_behind(temporary)
            if behind is not None:
                raise behind from error
            raise
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _write_error_behind(temporary: Path) -> OSError | None:
    """The OSError behind a torch.save that failed with a RuntimeError, or None if writing works.

    torch's zip writer reports a full disk (or a quota, or an I/O error) as "unexpected pos
    N vs M" and keeps no OSError; writing to the same file again asks the filesystem itself.
    """
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return None
    try:
        block = bytes(1 << 16)
        for _ in range(16):  # up to 1 MiB: room that a short write left is used up, then the error shows
            os.write(descriptor, block)
        os.fsync(descriptor)
    except OSError as error:
        return error
    finally:
        os.close(descriptor)
    return None


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _is_refused_pickle(path, str(error)):
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): neither "
                                  "a checkpoint nor any pickle") from None
        detail = _refusal_detail(str(error))
        raise CheckpointError(
            f"{path}: refused: the file contains objects other than tensors and plain values, "
            f"which could run code when loaded. cifartui only loads checkpoints it wrote.{detail}"
        ) from None
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways (struct.error, OverflowError, ...)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if not isinstance(error, (RuntimeError, OSError)) or not detail:  # a bare "101" says nothing alone
            detail = f"{type(error).__name__}{': ' + detail if detail else ''}"
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): {detail}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a cifartui checkpoint (no '{CHECKPOINT_FORMAT}' format marker)")
    return state


CHECKPOINT_FORMAT = "cifartui-checkpoint-1"

# A file that is not a zip archive and is larger than this is not worth parsing as a bare pickle.
_LARGEST_BARE_PICKLE = 64 * 2**20


# What torch's loader says when a pickle asks for an object beyond tensors and plain values.
_OBJECT_REFUSALS = ("GLOBAL", "Trying to call reduce", "Can only create new object", "Can only build")


def _is_refused_pickle(path: Path, message: str) -> bool:
    """Whether torch refused a real pickle (which might run code), rather than failing on damaged bytes.

    torch's loader says "Unsupported operand" both for random bytes and for a bare
    pickle of a newer protocol, and random bytes can even start like a request for a
    global, so a file that is not torch's archive is asked itself: a stream that parses
    as a pickle to its end is one.
    """
    try:
        if zipfile.is_zipfile(path):  # the archive torch.save writes: its pickle asked for an object
            return any(sign in message for sign in _OBJECT_REFUSALS)
        if path.stat().st_size > _LARGEST_BARE_PICKLE:
            return False
        data = path.read_bytes()
        for opcode, _argument, _position in pickletools.genops(data):
            if opcode.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - bytes that do not parse as a pickle are damaged
        return False
    return False


def _refusal_detail(message: str) -> str:
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("WeightsUnpickler error:") and line != "WeightsUnpickler error:":
            return f" ({line[:200]})"
    return ""


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Every global random state a training step on `device` can touch, as tensors and plain values.

    Of the GPUs, only `device`'s: the others belong to other runs (the same checkpoint then
    resumes on a machine with fewer GPUs, or on another one).
    """
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what capture_rng saved; the CUDA state goes to `device` alone.

    Older checkpoints hold every GPU's state in a list: the entry of `device`'s index is
    taken when there is one, else the first.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or device is None or device.type != "cuda":
        return
    if isinstance(saved, (list, tuple)):
        if not saved:
            return
        index = device.index or 0
        saved = saved[index] if index < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved, device)
