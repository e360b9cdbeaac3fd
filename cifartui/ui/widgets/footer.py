"""The footer of every screen: its keys, tightened on narrow terminals so none is cut off."""

from __future__ import annotations

from textual import events
from textual.widgets import Footer

# Below this width the keys sit closer together; below the second the palette's own
# key (ctrl+p) leaves the footer (it still works, and the help names it).
COMPACT_BELOW = 100
PALETTE_KEY_FROM = 90


class KeyFooter(Footer):
    def on_resize(self, event: events.Resize) -> None:
        self.compact = event.size.width < COMPACT_BELOW
        self.show_command_palette = event.size.width >= PALETTE_KEY_FROM
