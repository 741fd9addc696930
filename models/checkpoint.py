"""Load Qwen2-VL, or the built-in demo model when no weights exist. (LoRA adapters: models/adapters.py.)

The demo model is Qwen2-VL's real architecture at a tiny size with deterministic random weights,
driven by Qwen2-VL-2B-Instruct's genuine processor files vendored in `qwen2_vl_2b_instruct/`.
It lets the whole product run, and be tested, on a machine that cannot download weights.
Its answers are noise, and the app says so; but noise that feedback can move (group_by_script), so the
whole loop, from thumbs to a better adapter, can be seen working on it (bench/bench_flywheel.py).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from models.backend import DemoReason

log = logging.getLogger(__name__)

QWEN2_VL_FILES = Path(__file__).parent / "qwen2_vl_2b_instruct"
DEMO = "demo"
DEMO_SEED = 0
# The demo's answers are noise: the chat asks for this many new tokens unless the user asks for more, so a
# newcomer sees one stream in seconds, not minutes.
DEMO_ANSWER_TOKENS = 128


class ModelLoadError(RuntimeError):
    """The configured model exists but cannot be used; the message says what to fix."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: ProcessorMixin
    name: str
    is_demo: bool
    # Why the demo model is serving, when it is: shown in the UI and the log.
    demo_reason: DemoReason | None = None
    precision: str = "float32"  # what it computes in, and why (pick_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings


def pick_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# CPU feature flags (Linux's /proc/cpuinfo) of native bf16 arithmetic: x86's AVX512-BF16 and AMX, Arm's BF16.
# There bf16 halves the memory and shortens time to first token 1.3-2.4x (bench/RESULTS.md); elsewhere
# bf16 is emulated, slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; none where there is no /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return frozenset(value.split())
    return frozenset()


def pick_dtype(dtype: str, device: torch.device, flags: frozenset[str] | None = None) -> tuple[torch.dtype, str]:
    """The precision to compute in, and why: bf16 on CUDA (what Qwen2-VL was trained in), fp16 on Apple
    GPUs, bf16 on a CPU that computes it natively (`flags`, default this CPU's), fp32 on other CPUs."""
    if dtype != "auto":
        return getattr(torch, dtype), "set by LOUPE_DTYPE"
    if device.type == "cuda":
        return torch.bfloat16, "what Qwen2-VL was trained in"
    if device.type == "mps":
        return torch.float16, "Apple GPUs' fast precision"
    if native := sorted(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags)):
        return torch.bfloat16, f"this CPU computes bf16 natively ({', '.join(native)})"
    return torch.float32, "this CPU has no native bf16 (AVX512-BF16, AMX or Arm BF16)"


def load_model(
    model: str, device: str = "auto", dtype: str = "auto", quantization: BitsAndBytesConfig | None = None
) -> LoadedModel:
    """Load `model` (hub id, local folder, or "demo"), its linear layers quantized as `quantization` says
    (bitsandbytes, for QLoRA training; models/train.py).

    Falls back to the demo model only when the model is not on disk, not in the local hub
    cache, and the hub cannot be reached. Every other failure raises ModelLoadError.
    Why the demo model stands in (`demo_reason`) is its caller's to say, in its terms: the app serves it,
    training trains on it.
    """
    torch_device = pick_device(device)
    torch_dtype, why = pick_dtype(dtype, torch_device)
    precision = f"{str(torch_dtype).removeprefix('torch.')}, {why}"

    placed = {"quantization_config": quantization, "device_map": str(torch_device)} if quantization else {}
    if demo_reason := why_demo(model):
        qwen, processor = build_demo_model(), load_processor(QWEN2_VL_FILES)
        if quantization:  # bitsandbytes quantizes a checkpoint as it loads it
            with tempfile.TemporaryDirectory(prefix="loupe-demo-") as folder:
                qwen.save_pretrained(folder)
                qwen = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch_dtype, **placed)
        name = "demo"
    else:
        log.info("Loading %s on %s...", model, torch_device)
        try:
            model_type = AutoConfig.from_pretrained(model).model_type
            if model_type != "qwen2_vl":
                raise ValueError(f"it is a '{model_type}' model, not Qwen2-VL")
            processor = load_processor(model)
            qwen = Qwen2VLForConditionalGeneration.from_pretrained(model, dtype=torch_dtype, **placed)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadError(
                f"Could not load the Qwen2-VL model '{model}': {error}. Check that LOUPE_MODEL names a "
                "complete Qwen2-VL checkpoint (config.json, weights, tokenizer and processor files), "
                "or set LOUPE_MODEL=demo to try the app without weights."
            ) from error
        name = model

    if not quantization:  # a quantized model was placed as it loaded; its 4-bit weights keep their type
        qwen = qwen.to(device=torch_device, dtype=torch_dtype)
    qwen.eval()
    log.info("%s runs on %s in %s", name, torch_device, precision)
    return LoadedModel(
        model=qwen,
        processor=processor,
        name=name,
        is_demo=demo_reason is not None,
        demo_reason=demo_reason,
        precision=precision,
    )


def why_demo(model: str) -> DemoReason | None:
    """Why the demo model stands in for `model`, or None when `model` loads: it is "demo", or it is not on
    disk, not in the local hub cache, and the hub cannot be reached. ModelLoadError when the hub refuses it, or
    when it is neither a folder nor a hub id."""
    if model == DEMO:
        return DemoReason("asked", model)
    if not Path(model).is_dir() and not _in_hub_cache(model):
        return _hub_unreachable(model)
    return None


def load_processor(source: str | Path) -> ProcessorMixin:
    """Qwen's processor as shipped. Images arrive already sized to Loupe's pixel budget
    (models.images.fit_to_budget, and per image in qwen-vl-utils), so its own limits never bind."""
    return AutoProcessor.from_pretrained(source)


@dataclass(frozen=True)
class TinySize:
    """The sizes that shrink Qwen2-VL-2B's real config to a tiny model; the vocabulary stays Qwen's."""

    hidden: int
    intermediate: int
    mrope_section: tuple[int, int, int]  # splits each head's rotary half (head_dim / 2) over time, height, width
    vision_embed: int
    heads: int = 4
    kv_heads: int = 2
    layers: int = 2


DEMO_SIZE = TinySize(hidden=64, intermediate=128, mrope_section=(2, 3, 3), vision_embed=32)  # head_dim 16: fast
# vLLM's CPU attention needs head_dim >= 32 (../shared/notes/vllm-cpu.md): the smallest size it was seen serving.
SERVABLE_SIZE = TinySize(hidden=256, intermediate=512, mrope_section=(8, 12, 12), vision_embed=64)


def build_demo_model(size: TinySize = DEMO_SIZE) -> Qwen2VLForConditionalGeneration:
    """Qwen2-VL with the real vocabulary, special tokens and rope layout, shrunk to ~10M parameters
    (~40M at SERVABLE_SIZE), with deterministic random weights."""
    config = Qwen2VLConfig.from_pretrained(QWEN2_VL_FILES)
    text = config.text_config
    text.hidden_size, text.intermediate_size = size.hidden, size.intermediate
    text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads = size.layers, size.heads, size.kv_heads
    text.layer_types = text.layer_types[: size.layers]
    text.rope_parameters["mrope_section"] = list(size.mrope_section)
    vision = config.vision_config
    vision.depth, vision.embed_dim, vision.num_heads, vision.hidden_size = 2, size.vision_embed, 2, size.hidden
    config.dtype = config.text_config.dtype = "float32"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        demo = Qwen2VLForConditionalGeneration(config)
        group_by_script(demo)
    demo.generation_config = GenerationConfig(
        bos_token_id=151643,
        eos_token_id=[151645, 151643],
        pad_token_id=151643,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        repetition_penalty=1.05,
        max_new_tokens=1024,  # a served copy's cap (vLLM takes it as the most a request may ask for)
    )
    return demo


# The norm of the component that the tokens of one writing system share; a token's own random part has norm
# ~0.02 * sqrt(hidden), 0.16 in the demo. Large enough that an adapter can make a script several times more
# likely within a few steps (bench/RESULTS.md, the flywheel), small enough that every script still appears.
SCRIPT_SPREAD = 0.6


def group_by_script(model: Qwen2VLForConditionalGeneration) -> None:
    """Give the tokens of each writing system (Latin, Han, Hangul, Cyrillic...) a shared random component in the
    model's (tied) token embeddings, as a trained model's embeddings cluster by language.

    Without it every token's logit is its own random vector's product with the hidden state, and the hidden
    state is normalised to a fixed length: the demo's next-token distribution stays within a hair of uniform over
    151,000 tokens, and no adapter can move it toward anything a person could prefer. With it, "answer in Korean"
    is one direction an adapter can learn, as it would be for a real model. Special tokens keep their own."""
    scripts, names = vocabulary_scripts()
    hidden = model.config.text_config.hidden_size
    centroids = torch.nn.functional.normalize(torch.randn(len(names), hidden), dim=-1) * SCRIPT_SPREAD
    with torch.no_grad():
        model.get_input_embeddings().weight[: len(scripts)] += centroids[scripts]


@cache
def vocabulary_scripts() -> tuple[torch.Tensor, tuple[str, ...]]:
    """For each regular token of Qwen's vocabulary, the index of its writing system among the names returned:
    the first word of the Unicode name of its first letter (LATIN, CJK, HANGUL...), or OTHER for none."""
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_VL_FILES)
    texts = tokenizer.batch_decode([[token] for token in range(tokenizer.vocab_size)])
    scripts = [next((unicodedata.name(c, "OTHER").split()[0] for c in text if c.isalpha()), "OTHER") for text in texts]
    names = tuple(sorted(set(scripts)))
    return torch.tensor([names.index(script) for script in scripts]), names


def write_checkpoint(model: Qwen2VLForConditionalGeneration, folder: Path) -> Path:
    """`model` as a checkpoint folder any Qwen2-VL loader reads (transformers, vLLM): weights, config,
    generation config, and Qwen's real processor files with their license."""
    model.save_pretrained(folder)
    load_processor(QWEN2_VL_FILES).save_pretrained(folder)
    shutil.copy(QWEN2_VL_FILES / "LICENSE", folder / "LICENSE")
    return folder


def _in_hub_cache(model: str) -> bool:
    try:
        AutoProcessor.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


def _hub_unreachable(model: str) -> DemoReason | None:
    """The reason to fall back to the demo model, or None when the hub answers for `model`.

    One quick request decides it: transformers' own download path retries for minutes.
    """
    try:
        HfApi().model_info(model, timeout=10)
    except HFValidationError as error:  # no hub would take it (a mistyped absolute path): the hub was never asked
        raise ModelLoadError(
            f"'{model}' is neither a folder on this machine nor a model hub id (such as Qwen/Qwen2-VL-2B-Instruct)"
        ) from error
    except HfHubHTTPError as error:  # the hub answered: no such repo, gated, ...
        raise ModelLoadError(f"The model hub refused '{model}': {error}") from error
    except Exception as error:  # noqa: BLE001 - DNS, TLS, proxy, timeout: all mean "no hub here"
        return DemoReason("unreachable", model, str(error))
    return None
