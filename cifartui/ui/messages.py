"""Messages that carry engine events from training threads into the app."""

from __future__ import annotations

from textual.message import Message

from cifartui.engine import api


class RunEvent(Message):
    """An engine event of one run. Posted from the training thread; never blocks it."""

    def __init__(self, run_id: str, event: api.Event) -> None:
        super().__init__()
        self.run_id = run_id
        self.event = event

    def can_replace(self, message: Message) -> bool:
        # A queued newer StepMetrics of the same run supersedes this one; epoch, checkpoint
        # and final events are never dropped.
        return (isinstance(self.event, api.StepMetrics) and isinstance(message, RunEvent)
                and message.run_id == self.run_id and isinstance(message.event, api.StepMetrics))
