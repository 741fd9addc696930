"""LoRA adapters and export folders made up for tests and benchmarks.

Export folders as `python -m chat export --format trl-dpo / trl-kto` writes them, made up for training runs.

The rows say "LOUPE-OK" in every chosen answer and "LOUPE-ERR" in the rejected one, with the same words
otherwise, so DPO has something to learn and a pair's margin can turn positive.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from safetensors import safe_open

from models.checkpoint import DEMO_SIZE, TinySize, build_demo_model

MARKER = "LOUPE-OK"
# What every rejected answer says instead, before the chosen answer's own words: "-OK" and "-ERR" are one token
# each in Qwen's vocabulary, so the two answers differ in one token, and a pair's margin measures which marker
# the model prefers, not which answer is shorter (5 marker tokens cost the demo model ~50 nats, more than
# training moves). The untrained demo model prefers neither: "-OK" wins 44% of 48 pairs (seeds 0-2), where
# "-NO", "-NA" or "-FAIL" win 90% or more, and an adapter could not do better than the base model.
COUNTER_MARKER = "LOUPE-ERR"


PARTS = ("gear", "shaft", "bolt", "spring", "lever", "pulley", "valve", "relay", "fuse", "diode", "resistor", "cam")


KOREAN_PARTS = ("기어", "축", "볼트", "스프링", "레버", "밸브")


def text(role: str, words: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": words}]}


def asking(question: str, images: int) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [*({"type": "image"} for _ in range(images)), {"type": "text", "text": question}],
    }


def conversation(index: int, images: list[str], rng: random.Random) -> tuple[list[str], list[dict], tuple[str, ...]]:
    """The images, prompt and answer vocabulary of row `index`: one question about an image, a follow-up
    about an image shown a turn earlier, a question in Korean, or two images at once."""
    system = text("system", "You are Loupe, an engineering assistant.")
    part = rng.choice(PARTS)
    if index % 4 == 1:
        earlier = [asking("What is this?", 1), text("assistant", f"A {part}.")]
        return images[:1], [system, *earlier, asking("What is it made of?", 0)], PARTS
    if index % 4 == 2:
        return images[1:], [system, asking(f"이 부품은 {rng.choice(KOREAN_PARTS)}인가요?", 1)], KOREAN_PARTS
    if index % 4 == 3:
        return images, [system, asking(f"Which of these is the {part}?", 2)], PARTS
    return images[:1], [system, asking(f"Is this a {part}?", 1)], PARTS


def write_export(
    folder: Path, kind: str, prompts: int, seed: int, image_size: tuple[int, int] = (64, 48), answer_words: int = 3
) -> Path:
    """`prompts` questions, each with a chosen answer (the marker) and a rejected one (the counter-marker): as DPO
    pairs, or as KTO rows (the chosen one desirable, the rejected one not). Metadata columns as the export's."""
    (folder / "images").mkdir(parents=True)
    images = []
    for color in ("red", "blue"):
        png = io.BytesIO()
        Image.new("RGB", image_size, color).save(png, "PNG")
        images.append(f"images/{hashlib.sha256(png.getvalue()).hexdigest()}.png")
        (folder / images[-1]).write_bytes(png.getvalue())
    rng = random.Random(seed)
    rows = []
    for index in range(prompts):
        shown, prompt, words = conversation(index, images, rng)
        answer = " ".join(rng.choices(words, k=answer_words))
        chosen, rejected = text("assistant", f"{MARKER} {answer}"), text("assistant", f"{COUNTER_MARKER} {answer}")
        common = {"images": shown, "prompt": prompt, "rule": "comparison", "thread": f"{index:016x}", "user": "ab12"}
        if kind == "dpo":
            rows.append(
                common | {"chosen": [chosen], "rejected": [rejected], "chosen_by": "base", "rejected_by": "base"}
            )
        else:
            rows.append(common | {"completion": [chosen], "label": True, "completion_by": "base"})
            rows.append(common | {"completion": [rejected], "label": False, "completion_by": "base"})
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows]
    (folder / "train.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


LM_PROJECTIONS = r".*model\.language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def save_adapter(folder: Path, seed: int, size: TinySize = DEMO_SIZE, rank: int = 8) -> Path:
    """A LoRA adapter for the demo model (of `size`) with random, far from zero weights: it changes the answers."""
    torch.manual_seed(seed)
    lora = LoraConfig(r=rank, lora_alpha=8 * rank, target_modules=LM_PROJECTIONS, init_lora_weights=False)
    get_peft_model(build_demo_model(size), lora).save_pretrained(folder)
    return folder


def lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    """An adapter folder's LoRA weights, by the names its file gives them."""
    with safe_open(folder / "adapter_model.safetensors", "pt") as weights:
        return {key: weights.get_tensor(key) for key in weights.keys()}
