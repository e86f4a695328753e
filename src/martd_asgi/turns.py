"""Calm or busy: whether the items of an event-loop turn come alone or together.

Pushes that land in the same loop turn are cheaper sent together (one write for
many); a lone push is quicker sent at once. A turn counts as calm when the last
turn that had any items had one: its first item goes at once, and what follows
it in the same turn waits for the turn's end. The hub applies this to the
messages it delivers, the Redis backend's script connection to its calls.
"""

from __future__ import annotations


class Turns:
    """Counts the items of the current loop turn and remembers the last one's."""

    __slots__ = ("calm", "count")

    def __init__(self) -> None:
        self.count = 0  # items of this turn so far
        self.calm = True  # the last turn with items had one

    def add(self) -> bool:
        """Count an item of this turn: True when it is the first of a calm turn."""
        self.count += 1
        return self.count == 1 and self.calm

    def end(self) -> None:
        """The turn is over; call it once, at the end of a turn that had items."""
        if self.count:
            self.calm = self.count == 1
            self.count = 0
