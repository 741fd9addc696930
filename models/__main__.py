"""Model tools from the command line.

python -m models train --method dpo --data DIR --out models/adapters/NAME   (models/train.py; --help)
python -m models evaluate --data DIR [--adapter NAME ...] [--json]           (models/evaluate.py; --help)
python -m models merge --adapter NAME --out DIR [--base B] [--dtype bfloat16] (models/merge.py; --help)
"""

from __future__ import annotations

import sys
from importlib import import_module

# Command -> its module, imported only when it runs: TRL and torch take seconds to import.
COMMANDS = {"train": "models.train", "evaluate": "models.evaluate", "merge": "models.merge"}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(__doc__.strip())
    import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
