"""`python -m models train`, as a launcher (torchrun, accelerate launch) runs it on each of its processes, then
this process's trainable weights written to OUT/rank-N.pt: what a test compares across the processes.

    torchrun --nproc_per_node 2 -m tests.helpers.ddp_train --method dpo --data DATA --out OUT ...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

import models.train as training

built: list[Any] = []
build_trainer = training.build_trainer


def kept_trainer(*args: Any, **kwargs: Any) -> Any:  # build_trainer's own signature
    trainer = build_trainer(*args, **kwargs)
    built.append(trainer)
    return trainer


if __name__ == "__main__":
    training.build_trainer = kept_trainer
    training.main(sys.argv[1:])
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    weights = {name: p.detach().clone() for name, p in built[0].model.named_parameters() if p.requires_grad}
    torch.save(weights, out / f"rank-{PartialState().process_index}.pt")
