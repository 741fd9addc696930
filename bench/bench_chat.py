"""Benchmark Loupe on this machine, every number measured in one run.

Parts (select with --parts):
  streaming  the running Chainlit app, driven over socket.io like the web page, against
             `Generator.stream` called in-process: same demo model, prompt and greedy settings.
  images     visual tokens and preprocessing time (decode + fit + processor) of JPEG photos
             at the CPU and GPU default pixel budgets.
  full       a full-size Qwen2-VL-2B (the vendored real config, random weights) on CPU:
             build time, peak memory, time to first token with one image, and decode speed
             beside the memory-bandwidth bound. Also on CUDA in bf16 when a GPU is present.

Run from the repository root:
    .venv/bin/python -m bench.bench_chat
    .venv/bin/python -m bench.bench_chat --parts streaming --repeats 9
Other processes may share the machine, so compare numbers within one run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.generation.streamers import BaseStreamer
from transformers.initialization import no_init_weights

from chat.conversation import PromptBuilder, to_qwen, user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompts
from models.backend import ChatTemplateTokens
from models.checkpoint import QWEN2_VL_FILES, LoadedModel, load_model, load_processor
from models.generation import Generator, SamplingSettings, Usage
from models.images import ImageBudget, fit_to_budget, open_image
from tests.helpers.budgets import CPU_BUDGET, GPU_BUDGET
from tests.helpers.client import ChatClient
from tests.helpers.server import start_server

PARTS = ("streaming", "images", "full")
PROMPT = "Explain how a gearbox works in detail."
CONTEXT_TOKENS = 8192  # the app's default LOUPE_CONTEXT_TOKENS
MAX_MEGAPIXELS = 50.0  # the app's default LOUPE_MAX_IMAGE_MEGAPIXELS
IMAGE_SIZES = ((640, 480), (1920, 1080), (4000, 3000))
BUDGETS = {"CPU": CPU_BUDGET, "GPU": GPU_BUDGET}
FULL_IMAGE_SIZE = (1024, 768)
FILL_BLOCK = (1 << 24) + 17  # not a power of two, so consecutive layers get different values
GiB = 1024**3


@dataclass
class BenchSettings:
    parts: list[str]
    repeats: int
    new_tokens: int
    image_repeats: int
    full_dtypes: list[str]
    full_new_tokens: int


def parse_args(argv: list[str] | None = None) -> BenchSettings:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=11, help="streaming: raw/app pairs, alternating")
    parser.add_argument("--new-tokens", type=int, default=256, help="streaming: tokens per answer (greedy)")
    parser.add_argument("--image-repeats", type=int, default=5, help="images: runs per image and budget")
    parser.add_argument("--full-dtypes", default="bfloat16,float32", help="full: CPU dtypes, in order")
    parser.add_argument("--full-new-tokens", type=int, default=32, help="full: decoded tokens (forced)")
    args = parser.parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    return BenchSettings(
        parts=parts,
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        image_repeats=args.image_repeats,
        full_dtypes=[dtype for dtype in args.full_dtypes.split(",") if dtype],
        full_new_tokens=args.full_new_tokens,
    )


# --- Reporting --------------------------------------------------------------------------------


@dataclass
class Report:
    """Rows printed as they are measured, and again as one table at the end."""

    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, part: str, metric: str, value: str, note: str = "") -> None:
        self.rows.append((part, metric, value, note))
        print(f"[{part}] {metric}: {value}" + (f"  ({note})" if note else ""), flush=True)

    def table(self) -> str:
        lines = ["| part | metric | value | note |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def machine_details() -> dict[str, str]:
    """What the numbers depend on; the load average says whether something else was running."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    meminfo = Path("/proc/meminfo").read_text().split()
    ram = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu} ({'avx512_bf16' if 'avx512_bf16' in flags else 'no avx512_bf16'})",
        "cores": f"{os.cpu_count()} logical, torch uses {torch.get_num_threads()} threads",
        "ram": f"{ram / GiB:.1f} GiB",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load average at start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def print_machine(extra: str = "") -> None:
    """The machine details and the commit measured, printed before a bench's results."""
    print("Machine:")
    for key, value in machine_details().items():
        print(f"  {key}: {value}")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    print(f"  commit: {git.stdout.strip() or '?'}{extra}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- Part 1: app streaming against raw generation -----------------------------------------------


@dataclass
class StreamRun:
    """One answer's timeline, in seconds from the request, and the CPU seconds it cost, by process."""

    first: float
    last: float
    text: str
    pieces: int
    cpu: dict[str, float]

    def tokens_per_s(self, tokens: int) -> float:
        return tokens / self.last

    def ms_per_piece(self) -> float:
        """Mean gap between pieces after the first: the per-token cost once streaming runs."""
        return 1000 * (self.last - self.first) / max(self.pieces - 1, 1)


class TimedChatClient(ChatClient):
    """ChatClient that notes when each streamed piece reaches the client."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.arrivals: list[float] = []

    async def _record(self, event: str, payload: Any = None) -> None:
        if event in ("stream_start", "stream_token"):
            self.arrivals.append(time.perf_counter())
        await super()._record(event, payload)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time, all threads, of this process or of `pid` (read from /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def raw_run(
    generator: Generator, messages: list[dict[str, Any]], sampling: SamplingSettings, usage: Usage | None = None
) -> StreamRun:
    """Generator.stream in this process; the prompt is built beforehand, as a backend caller would."""
    pieces: list[str] = []
    arrivals: list[float] = []
    cpu_start, start = cpu_seconds(), time.perf_counter()
    async with aclosing(generator.stream(messages, sampling, usage)) as stream:
        async for piece in stream:
            arrivals.append(time.perf_counter())
            pieces.append(piece)
    cpu = {"raw process": cpu_seconds() - cpu_start}
    return StreamRun(arrivals[0] - start, arrivals[-1] - start, "".join(pieces), len(pieces), cpu)


async def app_run(url: str, server_pid: int, chat_settings: dict[str, Any], prompt: str) -> StreamRun:
    """One question in a fresh chat (so no history), timed at the client from send to each piece."""
    async with TimedChatClient(url) as client:
        await client.change_settings(chat_settings)
        server_start, client_start, start = cpu_seconds(server_pid), cpu_seconds(), time.perf_counter()
        reply = await client.ask(prompt)
        cpu = {"app server": cpu_seconds(server_pid) - server_start, "client": cpu_seconds() - client_start}
    tokens = reply.tokens
    return StreamRun(client.arrivals[0] - start, client.arrivals[-1] - start, "".join(tokens), len(tokens), cpu)


async def alternate_runs(
    url: str,
    server_pid: int,
    generator: Generator,
    messages: list[dict[str, Any]],
    sampling: SamplingSettings,
    repeats: int,
) -> tuple[list[StreamRun], list[StreamRun]]:
    """Raw and app runs in turn, after one unmeasured warm-up of the app, so drifting load hits both alike."""
    chat_settings = {"system_prompt": DEFAULT_PROMPT, **asdict(sampling)}
    await app_run(url, server_pid, chat_settings, PROMPT)
    raw, app = [], []
    for _ in range(repeats):
        raw.append(await raw_run(generator, messages, sampling))
        app.append(await app_run(url, server_pid, chat_settings, PROMPT))
    return raw, app


def bench_streaming(settings: BenchSettings, report: Report) -> None:
    """Same model, prompt and greedy settings in-process and through the app: what the app costs."""
    part = "streaming"
    loaded = load_model("demo", device="cpu")
    generator = Generator(loaded)
    sampling = SamplingSettings(temperature=0.0, top_p=0.8, max_new_tokens=settings.new_tokens, repetition_penalty=1.05)
    # The prompt exactly as the app builds it for a fresh chat: default system prompt, CPU budget.
    builder = PromptBuilder(ChatTemplateTokens(loaded.processor), CPU_BUDGET)

    def build() -> list[dict[str, Any]]:
        budget = CONTEXT_TOKENS - sampling.max_new_tokens
        return builder.build(system_prompts()[DEFAULT_PROMPT], [user_turn(PROMPT, [])], budget)

    messages = build()
    build_ms = median([timed(build)[1] for _ in range(5)]) * 1000
    # Warm-up, and the answer's true length: the model's own token count, not a re-tokenisation of
    # the text (the demo model's greedy answer is newlines, which the tokenizer would merge).
    usage = Usage()
    asyncio.run(raw_run(generator, messages, sampling, usage))
    tokens = usage.completion_tokens
    if tokens != sampling.max_new_tokens:
        print(f"  note: the greedy answer ends with EOS after {tokens} tokens, not {sampling.max_new_tokens}")

    with tempfile.TemporaryDirectory(prefix="loupe-bench-") as root:
        process, server = start_server(Path(root))
        try:
            raw, app = asyncio.run(
                alternate_runs(server.url, process.pid, generator, messages, sampling, settings.repeats)
            )
        finally:
            process.terminate()
            process.wait(timeout=20)

    same_text = all(run.text == raw[0].text for run in raw + app)
    raw_rate = median([run.tokens_per_s(tokens) for run in raw])
    app_rate = median([run.tokens_per_s(tokens) for run in app])
    # Each app run follows its raw run within seconds, so the pair's ratio cancels slow drifts in load.
    pair_ratios = [raw_answer.last / app_answer.last for raw_answer, app_answer in zip(raw, app, strict=True)]
    raw_ttft, app_ttft = median([run.first for run in raw]), median([run.first for run in app])
    note = f"median of {settings.repeats}, {tokens} tokens / (request -> last piece)"
    report.add(part, "answer", f"{tokens} tokens in {raw[0].pieces} pieces", f"prompt {usage.prompt_tokens} tokens")
    report.add(part, "app text == raw text (greedy)", "yes" if same_text else "NO, counts not comparable")
    report.add(part, "raw tokens/s", f"{raw_rate:.1f}", note)
    report.add(part, "app tokens/s", f"{app_rate:.1f}", note)
    report.add(
        part,
        "app/raw throughput",
        f"{median(pair_ratios):.3f}",
        f"goal >= 0.95; median of pairs {' '.join(f'{ratio:.2f}' for ratio in pair_ratios)}",
    )
    report.add(part, "raw TTFT", f"{raw_ttft * 1000:.1f} ms", "stream() call -> first piece")
    report.add(part, "app TTFT", f"{app_ttft * 1000:.1f} ms", "client send -> first stream_start")
    report.add(part, "app TTFT overhead", f"{(app_ttft - raw_ttft) * 1000:.1f} ms", "app - raw")
    report.add(part, "of which prompt building", f"{build_ms:.1f} ms", "PromptBuilder.build, in-process")
    raw_gap, app_gap = median([r.ms_per_piece() for r in raw]), median([r.ms_per_piece() for r in app])
    report.add(part, "raw ms per piece after the first", f"{raw_gap:.2f}")
    report.add(part, "app ms per piece after the first", f"{app_gap:.2f}", f"+{app_gap - raw_gap:.2f} ms per piece")
    for runs in (raw, app):
        for name in runs[0].cpu:
            cpu_ms = median([run.cpu[name] for run in runs]) * 1000 / tokens
            report.add(part, f"CPU per token, {name}", f"{cpu_ms:.2f} ms", "user + system, all threads")


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


# --- Part 2: image preprocessing ----------------------------------------------------------------


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour regions plus sensor-like noise: compresses (and decodes) like a photo, not a flat fill."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.normal(0, 6, smooth.shape).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def preprocess_once(generator: Generator, path: Path, budget: ImageBudget) -> tuple[dict[str, Any], list[float]]:
    """The app's path for one upload: decode (chat.ui.uploads), fit to the budget, then the processor."""
    start = time.perf_counter()
    image = open_image(path, MAX_MEGAPIXELS)
    decoded = time.perf_counter()
    fitted = fit_to_budget(image, budget)
    fit = time.perf_counter()
    message = user_turn("What does this image show?", [fitted])
    pixels = {"min_pixels": budget.min_pixels, "max_pixels": budget.max_pixels}
    inputs = generator.prepare_inputs([to_qwen(message, **pixels)])
    done = time.perf_counter()
    return inputs, [done - start, decoded - start, fit - decoded, done - fit]


def bench_images(settings: BenchSettings, report: Report) -> None:
    """JPEGs written to disk first, so decoding counts, then the app's own path at each budget."""
    part = "images"
    generator = Generator(load_model("demo", device="cpu"))
    with tempfile.TemporaryDirectory(prefix="loupe-bench-images-") as folder:
        paths = {}
        for width, height in IMAGE_SIZES:
            paths[width, height] = Path(folder) / f"photo_{width}x{height}.jpg"
            photo_like(width, height).save(paths[width, height], "JPEG", quality=90)
        for budget_name, budget in BUDGETS.items():
            for (width, height), path in paths.items():
                preprocess_once(generator, path, budget)  # warm-up: first calls pay lazy set-up
                runs = [preprocess_once(generator, path, budget) for _ in range(settings.image_repeats)]
                inputs = runs[0][0]
                _, grid_height, grid_width = inputs["image_grid_thw"][0].tolist()
                tokens = grid_height * grid_width // 4  # 2 x 2 patches merge into one visual token
                expected = budget.tokens(width, height)
                total, decode, fit, process = (median([run[1][i] * 1000 for run in runs]) for i in range(4))
                report.add(
                    part,
                    f"{width}x{height} JPEG ({path.stat().st_size / 1e6:.1f} MB), {budget_name} budget",
                    f"{tokens} visual tokens, {total:.1f} ms",
                    f"fitted {grid_width * 14}x{grid_height * 14}; decode {decode:.1f} + fit {fit:.1f} + "
                    f"processor {process:.1f} ms" + ("" if tokens == expected else f"; models.images says {expected}"),
                )


# --- Part 3: full-size Qwen2-VL-2B --------------------------------------------------------------


@dataclass
class FullResult:
    device: str
    dtype: str
    build_s: float
    peak_memory_gib: float
    memory_kind: str
    prompt_tokens: int
    visual_tokens: int
    preprocess_s: float
    cold_prefill_s: float
    prefill_s: float
    decode_tokens_per_s: float
    decode_tokens: int
    # CPU seconds per wall second: below the core count means other processes took cores.
    prefill_cores: float
    decode_cores: float
    decode_params: int
    total_params: int
    bytes_per_param: int


class TokenClock(BaseStreamer):
    """A streamer that notes when each generated token appears (the first put is the prompt),
    in wall time and in this process's CPU time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
            self.cpu.append(cpu_seconds())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def build_random_qwen2_vl_2b(device: str, dtype: torch.dtype) -> Qwen2VLForConditionalGeneration:
    """Qwen2-VL-2B from the vendored real config, allocated without init, then filled fast.

    Torch's default init runs normal_ over 2.2B values (about 30 s here); tiling one random block
    over every weight is 10x faster and just as good for timing. Norm weights are 1, biases 0.
    """
    config = Qwen2VLConfig.from_pretrained(QWEN2_VL_FILES)
    with torch.device(device), no_init_weights():
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights also skips the tying that init_weights does
    block = torch.empty(FILL_BLOCK, dtype=dtype, device=device).uniform_(-0.04, 0.04)
    cursor = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)
            else:
                cursor = fill_cyclic(parameter.view(-1), block, cursor)
    return model.eval()


def fill_cyclic(flat: torch.Tensor, block: torch.Tensor, start: int) -> int:
    """Copy `block` into `flat` over and over from `start` on; return where the next fill starts."""
    done = 0
    while done < flat.numel():
        piece = block[start : start + flat.numel() - done]
        flat[done : done + piece.numel()].copy_(piece)
        done += piece.numel()
        start = (start + piece.numel()) % block.numel()
    return start


def full_model_run(device: str, dtype_name: str, new_tokens: int) -> FullResult:
    """Runs in a fresh process, so that ru_maxrss is this model's peak and nothing else's."""
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    model, build_s = timed(lambda: build_random_qwen2_vl_2b(device, dtype))
    processor = load_processor(QWEN2_VL_FILES)
    generator = Generator(LoadedModel(model, processor, "random Qwen2-VL-2B", is_demo=True))
    builder = PromptBuilder(ChatTemplateTokens(processor), CPU_BUDGET)
    image = fit_to_budget(photo_like(*FULL_IMAGE_SIZE), CPU_BUDGET)
    messages = builder.build(
        system_prompts()[DEFAULT_PROMPT], [user_turn("What does this image show?", [image])], CONTEXT_TOKENS
    )

    def generate(tokens: int) -> tuple[float, TokenClock, float, float]:
        synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
        inputs, preprocess_s = timed(lambda: generator.prepare_inputs(messages))
        clock = TokenClock()
        synchronize()
        cpu_start, start = cpu_seconds(), time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **inputs,
                streamer=clock,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        return preprocess_s, clock, start, cpu_start

    # The first request pays one-time costs (kernel selection, allocator growth); the app's
    # first user would too, so it is reported, but the steady state is the second request.
    _, cold, cold_start, _ = generate(1)
    preprocess_s, clock, start, cpu_start = generate(new_tokens)
    inputs = generator.prepare_inputs(messages)
    embed = model.get_input_embeddings().weight
    language = sum(p.numel() for p in model.model.language_model.parameters())
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated() / GiB, "CUDA max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, "process ru_maxrss"
    return FullResult(
        device=device,
        dtype=dtype_name,
        build_s=build_s,
        peak_memory_gib=peak,
        memory_kind=kind,
        prompt_tokens=inputs["input_ids"].shape[1],
        visual_tokens=int((inputs["input_ids"] == model.config.image_token_id).sum()),
        preprocess_s=preprocess_s,
        cold_prefill_s=cold.times[0] - cold_start,
        prefill_s=clock.times[0] - start,
        decode_tokens_per_s=(len(clock.times) - 1) / (clock.times[-1] - clock.times[0]),
        decode_tokens=len(clock.times),
        prefill_cores=(clock.cpu[0] - cpu_start) / (clock.times[0] - start),
        decode_cores=(clock.cpu[-1] - clock.cpu[0]) / (clock.times[-1] - clock.times[0]),
        # Each decoded token reads every language-model weight once; the embedding table only
        # one row, but as the tied lm_head all of it. The vision tower is not used at all.
        decode_params=language - embed.numel() + model.lm_head.weight.numel(),
        total_params=sum(p.numel() for p in model.parameters()),
        bytes_per_param=embed.element_size(),
    )


def memory_bandwidth(device: str) -> tuple[float, float]:
    """(copy, read) bandwidth in bytes/s: best of 5 over 1 GiB, copy counting read + write."""
    source = torch.ones(GiB // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    copy, read = [], []
    for _ in range(5):
        synchronize()
        start = time.perf_counter()
        target.copy_(source)
        synchronize()
        copy.append(2 * GiB / (time.perf_counter() - start))
        start = time.perf_counter()
        source.sum().item()
        read.append(GiB / (time.perf_counter() - start))
    return max(copy), max(read)


def matrix_vector_bandwidth(device: str, dtype: torch.dtype) -> float:
    """Bytes/s of weights that batch-1 `linear` streams, the operation decode is made of.

    40 MLP-sized matrices (over 0.5 GB, far beyond cache) so the weights come from memory.
    Below the copy bandwidth means the kernel, not memory, limits decode in this dtype. Best of
    8 passes: with other processes on the cores single passes vary 3x (bf16 most, being compute-bound).
    """
    weights = [torch.rand(8960, 1536, dtype=dtype, device=device) for _ in range(40)]
    vector = torch.rand(1, 1536, dtype=dtype, device=device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    seconds = []
    with torch.inference_mode():
        for _ in range(8):
            synchronize()
            start = time.perf_counter()
            for weight in weights:
                torch.nn.functional.linear(vector, weight)
            synchronize()
            seconds.append(time.perf_counter() - start)
    return sum(weight.numel() * weight.element_size() for weight in weights) / min(seconds[1:])


def bench_full(settings: BenchSettings, report: Report) -> None:
    """The machine's bandwidth here, each model in its own process (clean peak memory), then the bound."""
    runs = [("cpu", dtype) for dtype in settings.full_dtypes]
    if torch.cuda.is_available():
        runs.append(("cuda", "bfloat16"))
    else:
        report.add("full", "CUDA run", "no GPU", "torch.cuda.is_available() is False")
    bandwidths = {device: memory_bandwidth(device) for device in {device for device, _ in runs}}
    for device, (copy, read) in bandwidths.items():
        report.add("full", f"{device} memory bandwidth", f"copy {copy / 1e9:.1f} GB/s, read {read / 1e9:.1f} GB/s")
    for device, dtype in runs:
        streamed = matrix_vector_bandwidth(device, getattr(torch, dtype))
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(full_model_run, device, dtype, settings.full_new_tokens).result()
        report_full(result, bandwidths[device], streamed, report)


def report_full(result: FullResult, bandwidth: tuple[float, float], streamed: float, report: Report) -> None:
    """`bandwidth` is the machine's (copy, read); `streamed` what batch-1 linear reaches in this dtype."""
    part = f"full {result.device} {result.dtype}"
    bytes_per_token = result.decode_params * result.bytes_per_param
    copy_bound, read_bound = (rate / bytes_per_token for rate in bandwidth)
    ttft = result.preprocess_s + result.prefill_s
    report.add(part, "build (random weights)", f"{result.build_s:.1f} s", f"{result.total_params / 1e9:.2f}B params")
    report.add(part, "peak memory", f"{result.peak_memory_gib:.1f} GiB", result.memory_kind)
    report.add(
        part, "prompt", f"{result.prompt_tokens} tokens", f"{result.visual_tokens} visual, 1024x768 at CPU budget"
    )
    report.add(
        part,
        "TTFT",
        f"{ttft:.2f} s",
        f"preprocess {result.preprocess_s:.2f} + prefill {result.prefill_s:.2f}; "
        f"first request's prefill {result.cold_prefill_s:.2f} s",
    )
    report.add(part, "decode", f"{result.decode_tokens_per_s:.2f} tokens/s", f"{result.decode_tokens} tokens, greedy")
    report.add(
        part,
        "CPU cores busy",
        f"prefill {result.prefill_cores:.2f}, decode {result.decode_cores:.2f}",
        f"of {torch.get_num_threads()} torch threads; less means other processes took the cores",
    )
    report.add(
        part,
        "bandwidth bound",
        f"{copy_bound:.2f} tokens/s",
        f"copy bandwidth / {bytes_per_token / 1e9:.2f} GB per token; read bandwidth gives {read_bound:.2f}",
    )
    report.add(part, "decode / bound", f"{result.decode_tokens_per_s / copy_bound:.0%}")
    report.add(
        part,
        "batch-1 linear bound",
        f"{streamed / bytes_per_token:.2f} tokens/s",
        f"the same weights at the {streamed / 1e9:.1f} GB/s that batch-1 linear reaches in {result.dtype}",
    )


# --- Main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    print_machine()
    report = Report()
    benches = {"streaming": bench_streaming, "images": bench_images, "full": bench_full}
    for part in settings.parts:
        started = time.perf_counter()
        benches[part](settings, report)
        print(f"[{part}] done in {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(report.table())
    print(f"\nload average at end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
