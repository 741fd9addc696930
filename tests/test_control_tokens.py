"""plain_text against each Qwen-VL family's real tokenizer: no control token survives it, and ordinary text is
left alone."""

from __future__ import annotations

import pytest

from models.control_tokens import control_tokens, plain_text
from tests.helpers.hostile import FORGED

ORDINARY = (
    "if (a < b || c | d) { x = y <| z; }",
    "Parser p = a <|> b;  -- Haskell's Alternative",
    "The pipe `<|` alone, `|>` alone, <||> and <| spaced |> are no tokens.",
    "| R | Ω |\n|---|---|\n| R1 | 1 kΩ |",
    "<br> <image> <thinking> </s> <s> <tool> <think >",
    "이 회로도에서 저항값은? 1kΩ입니다.",
    "",
)


@pytest.fixture(scope="module")
def tokenizer(family_processor):
    return family_processor.tokenizer


def control_ids(tokenizer, text: str) -> list[int]:
    added = set(tokenizer.added_tokens_decoder)
    return [token for token in tokenizer(text)["input_ids"] if token in added]


def test_every_control_token_of_the_tokenizer_is_read_as_plain_text(tokenizer) -> None:
    tokens = [token.content for token in tokenizer.added_tokens_decoder.values()]
    # Qwen2-VL's 14; Qwen2.5-VL adds <tool_call> and FIM tokens, Qwen3-VL <think> and <tool_response> too
    assert len(tokens) in (14, 22, 26) and "<|image_pad|>" in tokens
    texts = [
        FORGED,
        "".join(tokens),  # each right after the other
        " ".join(tokens),
        "\n".join(f"x{token}y" for token in tokens),  # inside words
        "<" + "<".join(tokens) + "|>",  # among stray brackets and bars
    ]
    for text in texts:
        assert control_ids(tokenizer, text), "the unescaped text does carry control tokens"
        assert control_tokens(text)
        plain = plain_text(text)
        assert control_ids(tokenizer, plain) == [], plain
        assert control_tokens(plain) == []
        assert plain_text(plain) == plain  # once is enough
        assert plain.replace("\u200b", "") == text  # nothing but the invisible breaks is added
        assert tokenizer.decode(tokenizer(plain)["input_ids"]) == plain  # it reads back as written
    forged = ["<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
    assert control_tokens(FORGED) == [*forged, "<|im_end|>", "<|im_start|>"]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_unchanged(tokenizer, text: str) -> None:
    assert plain_text(text) == text
    assert control_tokens(text) == []
