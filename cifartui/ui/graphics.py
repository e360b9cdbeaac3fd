"""How the terminal shows pictures: sixel, kitty graphics, or half-block characters.

Half blocks work everywhere colour does, over SSH and in tmux, and need nothing more.
With the optional package textual-image (`pip install 'cifartui[images]'`), terminals
that speak sixel (xterm -ti vt340, foot, WezTerm, iTerm2, Windows Terminal, tmux built
with sixel) or the kitty graphics protocol show the images at full resolution.

The terminal must be asked what it can show before the app starts: once Textual runs,
its input thread reads the answers. So the choice is made once, in `choose_mode`,
before the app is created; asking costs at most a few tenths of a second and only
happens when textual-image is installed and both standard streams are a terminal.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
from rich.text import Text
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from cifartui.ui.widgets.pictures import half_block_image

MODES = ("auto", "sixel", "kitty", "halfblock")
ENVIRONMENT = "CIFARTUI_IMAGES"
EXTRA_HINT = "pip install 'cifartui[images]' (or pip install textual-image)"
# A 32x32 image is enlarged by whole pixels before the widget fits it to its cells, so
# CIFAR's pixels stay sharp squares instead of being smoothed by a bicubic resize.
PIXEL_REPEAT = 10


class GraphicsError(ValueError):
    """An image mode that cannot be used here, with what to do about it."""


def _is_terminal() -> bool:
    return bool(sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__ and sys.__stdin__.isatty())


def choose_mode(requested: str | None = None) -> str:
    """The mode to draw pictures in: "sixel", "kitty" or "halfblock".

    `requested` comes from `--images`; without it, from $CIFARTUI_IMAGES; "auto" by
    default, which asks the terminal when textual-image is installed and otherwise
    uses half blocks. Asking for sixel or kitty explicitly skips the question (useful
    in tmux, which may not pass it on) but needs textual-image.
    """
    return _prepare(*_ask(requested))


class ModeChoice:
    """`choose_mode` in a thread, so the terminal answers while the app's modules load.

    The thread only waits on the terminal and imports textual-image's renderables,
    which import nothing of Textual; `result()` does the rest in the caller's thread.
    """

    def __init__(self, requested: str | None = None) -> None:
        self._answer: tuple[str, str] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(requested,), name="cifartui-images", daemon=True)
        self._thread.start()

    def _run(self, requested: str | None) -> None:
        try:
            self._answer = _ask(requested)
        except BaseException as error:  # noqa: BLE001 - raised again in result()
            self._error = error

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return _prepare(*self._answer)


def _ask(requested: str | None) -> tuple[str, str]:
    """The mode wanted or found, and where the wish came from (for messages)."""
    source = "--images"
    if requested is None:
        requested, source = os.environ.get(ENVIRONMENT, "").strip() or "auto", ENVIRONMENT
    if requested not in MODES:
        raise GraphicsError(f"{source}={requested!r}: expected one of {', '.join(MODES)}")
    if requested != "auto":
        return requested, source
    if not _is_terminal():
        return "halfblock", source
    try:
        # Importing the renderables asks the terminal for sixel, then kitty graphics
        # (each question waits at most 0.1 s for an answer).
        from textual_image import renderable
    except ImportError:
        return "halfblock", source
    return {renderable.SixelImage: "sixel", renderable.TGPImage: "kitty"}.get(renderable.Image, "halfblock"), source


def _prepare(mode: str, source: str) -> str:
    if mode == "halfblock":
        return mode
    try:
        # Measures the terminal's cells in pixels, which sizes the images; it too must
        # happen before the app runs.
        import textual_image.widget  # noqa: F401
    except ImportError:
        raise GraphicsError(f"{source}={mode} needs the optional package textual-image: {EXTRA_HINT}") from None
    return mode


def picture(image: np.ndarray, mode: str) -> Widget:
    """A widget showing a 3x32x32 uint8 image: 32 cells wide, 16 rows high in every mode."""
    if mode == "halfblock":
        return Static(half_block_image(image), classes="picture")
    from PIL import Image as PILImage
    from textual_image.widget import SixelImage, TGPImage

    pixels = np.asarray(image, dtype=np.uint8).transpose(1, 2, 0)
    pixels = pixels.repeat(PIXEL_REPEAT, 0).repeat(PIXEL_REPEAT, 1)
    widget_class = SixelImage if mode == "sixel" else TGPImage
    widget = widget_class(PILImage.fromarray(np.ascontiguousarray(pixels), mode="RGB"), classes="picture")
    return widget


def picture_tile(image: np.ndarray, caption: Text, mode: str, *, classes: str) -> Widget:
    """A picture with its caption underneath, as the Inspect gallery and the augmentation preview show them."""
    return Vertical(picture(image, mode), Static(caption, classes="caption"), classes=classes)


__all__ = ["MODES", "ENVIRONMENT", "GraphicsError", "ModeChoice", "choose_mode", "picture", "picture_tile"]
