"""No user outweighs the team: the most rows, or counted battles, one user may give.

A member ten times as active as the rest, honest or flooding against the team, would otherwise set the direction
of the whole adapter through the export and decide the leaderboard through the arena (bench/bench_flywheel.py,
the hostile scenario). The export's rule 9 (chat/dataset/pairing.py) and the leaderboard's count of battles
(chat/arena/leaderboard.py) apply this one cap.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

# Twice the median user's count: the ordinary spread between members stays, a flood does not.
OVER_MEDIAN = 2


def user_cap(per_user: Iterable[int]) -> int | None:
    """The most one user may give, from each user's count; None when no user has any."""
    counts = sorted(count for count in per_user if count > 0)
    if not counts:
        return None
    middle = len(counts) // 2
    median = counts[middle] if len(counts) % 2 else (counts[middle - 1] + counts[middle]) / 2
    return math.floor(OVER_MEDIAN * median)


class UserCap:
    """Admits each user's first rows (or battles), in order, up to user_cap of what each user would give
    (`per_user`, counted by a first pass over the same items in the same order). Items without a user are
    not capped."""

    def __init__(self, per_user: Counter[str]) -> None:
        self.limit = user_cap(per_user.values())
        self.taken: Counter[str] = Counter()

    def admit(self, user: str | None) -> bool:
        if user is None or self.limit is None:
            return True
        self.taken[user] += 1
        return self.taken[user] <= self.limit
