"""When two prompts are one: the definition the export's rule 8 (chat/dataset/pairing.py), the training split
(models/train.py) and the leaderboard's vote hygiene (chat/arena/leaderboard.py) share.

"What does this circuit do?" asked again as "what does this CIRCUIT do" is the same question: the export
counts its rows together, the split holds it out whole or not at all (so an adapter is never measured on a
question it was trained on in other words), and a user's second battle on it is not a second vote.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable


def normal_prompt_text(text: str) -> str:
    """A prompt's text as prompts are compared: NFKC, casefolded, without punctuation, each run of whitespace
    one space, the ends stripped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(c for c in folded if not unicodedata.category(c).startswith("P")).split())


def prompt_key(texts: Iterable[str], images: Iterable[str]) -> str:
    """What the same prompts share: a digest of their texts as normal_prompt_text reads them, in order, and
    their images' content keys, in order."""
    return hashlib.sha256(json.dumps([[normal_prompt_text(t) for t in texts], list(images)]).encode()).hexdigest()
