"""`python -m models train`, as a launcher (torchrun, accelerate launch) runs it on each of its processes, then
this process's trainable weights written to OUT/rank-N.pt: what a test compares across the processes (and with
another launcher's); and OUT/wrapper.txt, the class the processes trained the model in (DistributedDataParallel,
DeepSpeedEngine...).

    torchrun --nproc_per_node 2 -m tests.helpers.ddp_train --method dpo --data DATA --out OUT ...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers.integrations import is_deepspeed_zero3_enabled

import models.train as training

built: list[Any] = []
build_trainer = training.build_trainer


def kept_trainer(*args: Any, **kwargs: Any) -> Any:  # build_trainer's own signature
    trainer = build_trainer(*args, **kwargs)
    built.append(trainer)
    return trainer


def trained_weights(trainer: Any) -> dict[str, torch.Tensor]:
    """This process's trainable weights, whole: under DeepSpeed ZeRO-3 each process holds a share of each,
    gathered here (tiny ones are kept whole anyway)."""
    weights = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    if not is_deepspeed_zero3_enabled():
        return {name: p.detach().clone() for name, p in weights.items()}
    from deepspeed.zero import GatheredParameters  # only where DeepSpeed runs (PYTHONPATH=.venv-deepspeed)

    with GatheredParameters(list(weights.values())):
        return {name: p.detach().clone() for name, p in weights.items()}


if __name__ == "__main__":
    training.build_trainer = kept_trainer
    training.main(sys.argv[1:])
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    torch.save(trained_weights(built[0]), out / f"rank-{PartialState().process_index}.pt")
    (out / "wrapper.txt").write_text(type(built[0].model_wrapped).__name__)
