"""The footer of every screen: its keys, tightened on narrow terminals so none is cut off."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# Below this width the keys sit closer together; below the second the palette's own
# key (ctrl+p) leaves the footer, and so do the keys of LEAVE_WHEN_NARROW, so that the
# first keys to know fit in 80 columns (the others still work; the help and the palette
# name them).
COMPACT_BELOW = 100
PALETTE_KEY_FROM = 90
LEAVE_WHEN_NARROW = frozenset({"sweeps"})


class KeyFooter(Footer):
    narrow = False

    def on_resize(self, event: events.Resize) -> None:
        self.compact = event.size.width < COMPACT_BELOW
        self.show_command_palette = event.size.width >= PALETTE_KEY_FROM
        narrow = event.size.width < PALETTE_KEY_FROM
        if narrow != self.narrow:
            self.narrow = narrow
            if self.is_mounted:
                self.call_after_refresh(self.recompose)

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if self.narrow and isinstance(widget, FooterKey) and widget.action in LEAVE_WHEN_NARROW:
                continue
            yield widget
