"""A dispatcher that hands nothing to a queue: it records the wake-ups, for tests that check what was woken."""

from __future__ import annotations


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[int, ...]]] = []

    def enqueue(self, task_name: str, *args: int) -> None:
        self.sent.append((task_name, args))
