"""Model tools from the command line.

python -m models train --method dpo --data DIR --out models/adapters/NAME   (models/train.py; --help)
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "train":
        sys.exit(__doc__.strip())
    from models.train import main as train  # TRL takes seconds to import: only when training

    train(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
