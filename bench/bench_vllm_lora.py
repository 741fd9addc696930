"""vLLM serving Qwen2-VL-2B with a runtime LoRA adapter, as Loupe serves it: what the adapter costs a stream.

A full-size Qwen2-VL-2B checkpoint (the vendored real config, random weights) and a rank-16 LoRA adapter on its
language model's projections (training's target modules, random non-zero weights, so that the adapter's matrices
really run) are served by `python -m chat vllm`, with the flags Loupe derives from its settings. Through Loupe's
own vLLM backend (models/vllm_client.py: the OpenAI API, the adapter registered at runtime as the app does), the
base model and the adapter each answer 1, then 8 streams at once: a question with one photo, MAX_NEW_TOKENS greedy
tokens. Reported per contender and concurrency: time to first token p50 and p99, decode tokens/s per stream
(after the first token), and tokens/s in all.

Run from the repository root, with the vLLM environment `make vllm` installs (its CUDA build where a GPU is found):
    .venv/bin/python -m bench.bench_vllm_lora                             # on a GPU (bench/gpu_check.sh runs it)
    .venv/bin/python -m bench.bench_vllm_lora --size tiny --device cpu    # the bench's own check, on a CPU
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from bench.bench_chat import FULL_IMAGE_SIZE, Report, build_random_qwen2_vl_2b, photo_like, print_machine
from chat.conversation import PromptBuilder, user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompts
from models.adapters import Adapter, AdapterDirectory
from models.backend import ChatTemplateTokens, SamplingSettings, Usage
from models.checkpoint import SERVABLE_SIZE, build_demo_model, load_processor, write_checkpoint
from models.images import ImageBudget, fit_to_budget
from models.train import LANGUAGE_MODEL_PROJECTIONS
from models.vllm_client import VllmBackend
from tests.helpers.vllm import CONTEXT_TOKENS, VllmServer

SERVED_NAME = "qwen2-vl-2b"
ADAPTER = "bench-lora"
STREAMS = (1, 8)
MAX_NEW_TOKENS = 128  # long enough that decoding, not the prompt, sets the per-stream rate
LORA_RANK = 16  # training's default


def write_model_and_adapter(size: str, checkpoint: Path, adapter: Path) -> None:
    """The checkpoint to serve, the full-size 2B in bf16 (as Qwen ships it) or the tiny one vLLM's CPU build
    serves (to check this bench without a GPU), and a LoRA adapter for it as training writes one (language-model
    projections, rank 16) but with random B matrices: peft starts B at zero, and the adapter would add nothing."""
    model = build_demo_model(SERVABLE_SIZE) if size == "tiny" else build_random_qwen2_vl_2b("cpu", torch.bfloat16)
    write_checkpoint(model, checkpoint)
    lora = LoraConfig(r=LORA_RANK, lora_alpha=32, target_modules=LANGUAGE_MODEL_PROJECTIONS, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(adapter)


async def stream_once(backend: VllmBackend, messages: list, adapter: Adapter | None) -> Usage:
    usage = Usage()
    sampling = SamplingSettings(temperature=0, top_p=1, max_new_tokens=MAX_NEW_TOKENS, repetition_penalty=1)
    async for _ in backend.stream(messages, sampling, usage, adapter=adapter):
        pass
    return usage


async def measure(backend: VllmBackend, messages: list, adapter: Adapter | None, streams: int, report: Report) -> None:
    started = time.perf_counter()
    usages = await asyncio.gather(*(stream_once(backend, messages, adapter) for _ in range(streams)))
    span = time.perf_counter() - started
    ttfts = sorted(usage.time_to_first_token or usage.duration for usage in usages)
    decode = [
        (usage.completion_tokens - 1) / (usage.duration - usage.time_to_first_token)
        for usage in usages
        if usage.time_to_first_token is not None and usage.completion_tokens > 1
    ]
    tokens = sum(usage.completion_tokens for usage in usages)
    p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
    report.add(
        adapter.name if adapter else "base",
        f"{streams} stream{'s' if streams > 1 else ''}",
        f"TTFT p50 {statistics.median(ttfts):.3f} s, p99 {p99:.3f} s",
        f"decode {statistics.median(decode):.1f} tokens/s a stream; {tokens / span:.0f} tokens/s in all "
        f"({tokens} tokens, {usages[0].prompt_tokens} prompt tokens each)",
    )


async def bench(url: str, checkpoint: Path, adapters: Path, budget: ImageBudget, report: Report) -> None:
    processor = load_processor(str(checkpoint))
    backend = await VllmBackend.connect(url, None, SERVED_NAME, str(checkpoint), processor)
    image = fit_to_budget(photo_like(*FULL_IMAGE_SIZE), budget)
    turn = user_turn("What does this image show? Describe every part.", [image])
    messages = PromptBuilder(ChatTemplateTokens(processor), budget).build(
        system_prompts()[DEFAULT_PROMPT], [turn], CONTEXT_TOKENS
    )
    # Found once: its version is its weights' digest, which the streams must not wait on.
    for adapter in (None, AdapterDirectory(adapters).get(ADAPTER)):
        await stream_once(backend, messages, adapter)  # warm-up: registers the adapter, compiles
        for streams in STREAMS:
            await measure(backend, messages, adapter, streams, report)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_vllm_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="full: Qwen2-VL-2B; tiny: a check")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where vLLM serves it")
    args = parser.parse_args(argv)
    print_machine()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="loupe-bench-vllm-lora-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        checkpoint = root / "checkpoint"
        write_model_and_adapter(args.size, checkpoint, root / "adapters" / ADAPTER)
        print(f"checkpoint and adapter written in {time.perf_counter() - started:.0f} s", flush=True)
        budget = ImageBudget.of(load_processor(str(checkpoint)), args.device, None, None)
        server = VllmServer.on(checkpoint, SERVED_NAME, root / "vllm.log", device=args.device)
        started = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - started
        report.add("vLLM", "start", f"{start_s:.0f} s", f"{args.size} checkpoint on {args.device}")
        try:
            asyncio.run(bench(server.url, checkpoint, root / "adapters", budget, report))
        finally:
            server.stop()
    print()
    print(report.table())


if __name__ == "__main__":
    main()
