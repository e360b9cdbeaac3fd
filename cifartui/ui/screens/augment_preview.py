"""A few training images as the chosen augmentation transforms them, before launching."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ItemGrid, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from cifartui.config import RunConfig
from cifartui.ui.graphics import picture_tile

IMAGES, DRAWS = 3, 3


class AugmentPreviewScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "close", "Close"), Binding("r", "redraw", "New draws")]

    def __init__(self, config: RunConfig, data_dir=None) -> None:  # noqa: ANN001
        super().__init__()
        self.config = config
        self.data_dir = data_dir
        self.seed = 0
        self.tiles: list[tuple[str, object]] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog augment-preview"):
            yield Static(f"[b]Augmentation[/] of {self.config.name}: loading images…", id="augment-title")
            with VerticalScroll():
                yield ItemGrid(id="augment-tiles", min_column_width=34)
            yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.action_redraw()

    def action_redraw(self) -> None:
        self._draw(self.seed)
        self.seed += 1

    @work(thread=True, exclusive=True, group="augment-preview", exit_on_error=False)
    def _draw(self, seed: int) -> None:
        import numpy as np
        import torch

        from cifartui.config import DatasetConfig
        from cifartui.engine.api import Augmenter, DataError, load_dataset

        dataset_config, note = self.config.dataset, ""
        try:
            dataset = load_dataset(dataset_config, self.data_dir, download=False)
        except DataError as error:
            # No download from a preview: show generated images and say why.
            dataset = load_dataset(DatasetConfig(name="synthetic", train_size=IMAGES, test_size=1), download=False)
            # The error's first line is a sentence with its own brackets and full stop; it
            # follows a dash rather than going inside brackets of ours.
            note = f" — generated images, because {escape(str(error).splitlines()[0])}"
        originals = torch.from_numpy(np.ascontiguousarray(dataset.train_images[:IMAGES]))
        generator = torch.Generator().manual_seed(seed)
        augmenter = Augmenter(self.config.augment)
        tiles = []
        for index in range(len(originals)):
            label = dataset.class_names[int(dataset.train_labels[index])]
            tiles.append((f"{label}: original", originals[index].numpy()))
            for draw in range(DRAWS):
                # Shown in pixel space: padding appears black here, where training pads the standardized image.
                image = augmenter(originals[index:index + 1].float() / 255.0, generator)[0]
                tiles.append((f"{label}: draw {draw + 1}", (image.clamp(0, 1) * 255).round().byte().numpy()))
        sentence = f"{self._describe()}{note}"
        title = f"[b]Augmentation[/] {sentence}{'' if sentence.endswith('.') else '.'} [b]r[/] draws again, [b]esc[/] closes."
        self.app.call_from_thread(self._show, title, tiles)

    def _describe(self) -> str:
        a = self.config.augment
        parts = [f"crop pad {a.crop_padding}" if a.crop_padding else "", f"translate {a.translate}" if a.translate else "",
                 f"rotation {a.rotation:g}°" if a.rotation else "", f"shift {a.shift:g}" if a.shift else "",
                 "flip" if a.flip else "", f"cutout {a.cutout}" if a.cutout else ""]
        return ", ".join(p for p in parts if p) or "none: every draw equals the original"

    def _show(self, title: str, tiles: list[tuple[str, object]]) -> None:
        self.tiles = tiles
        self.query_one("#augment-title", Static).update(title)
        grid = self.query_one("#augment-tiles", ItemGrid)
        grid.remove_children()
        mode = self.app.image_mode
        grid.mount_all([picture_tile(image, Text(caption), mode, classes="augment-tile") for caption, image in tiles])

    def on_button_pressed(self, _event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
