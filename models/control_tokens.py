"""Untrusted text as plain text: never a chat-template control token such as <|im_end|> or <|image_pad|>.

Qwen's chat template writes a conversation's structure as control tokens (`<|im_start|>assistant`,
`<|im_end|>`, `<|vision_start|><|image_pad|><|vision_end|>`), and its tokenizer turns those strings into
the control tokens' ids wherever they appear in the rendered text, a user's words included. A question
carrying `<|im_end|>\\n<|im_start|>assistant\\n...` would be read as an answer the model had given, and a
stray `<|image_pad|>` asks for an image nobody sent, which fails the local model's answer and, in an export,
the training run of everyone's data. So every text a user, a document or an earlier answer contributes goes
through plain_text before it reaches a model: in the chat (chat.conversation.to_qwen, the one place both
backends' messages are built), in the exports (chat/dataset/export.py) and, checked, in training
(models/train.py refuses rows that still carry one).

Escaping, not the tokenizer's `split_special_tokens`: the template renders one string, then it is
tokenized whole, so that switch would split the template's own tokens too. And the consumers that render
it are not ours to configure: a vLLM server, TRL's collators, LLaMA-Factory. Text that no longer contains
the token's exact string is tokenized as ordinary text by all of them.

Imports nothing heavy: the export, which must not load torch or transformers, uses it.
"""

from __future__ import annotations

import re

# Every control token of Qwen2-VL's tokenizer is `<|name|>`; a name has no space, bar or angle bracket, so `<|>`,
# `a <| b |> c` and Markdown tables stay as they are. Qwen2.5-VL adds <tool_call> and </tool_call>, Qwen3-VL
# <tool_response> and <think> too, with their closing tags. tests/test_control_tokens.py checks each added token of
# each family's tokenizer; a checkpoint whose tokenizer adds tokens of another shape needs them here.
CONTROL_TOKEN = re.compile(r"<\|[^\s<>|]+\|>|</?(?:tool_call|tool_response|think)>")
# Put after the token's `<`: the exact string is gone, the text looks the same, and it is one character that
# Qwen's byte-level BPE encodes as ordinary bytes. The result no longer matches CONTROL_TOKEN, so applying
# plain_text twice changes nothing.
BREAK = "\u200b"  # ZERO WIDTH SPACE


def plain_text(text: str) -> str:
    """`text` with every control-token-shaped string broken by an invisible character, so that a tokenizer
    reads it as the characters it shows; text without one is returned unchanged."""
    return CONTROL_TOKEN.sub(lambda match: match[0][0] + BREAK + match[0][1:], text)


def control_tokens(text: str) -> list[str]:
    """The control-token-shaped strings in `text`, in order: what plain_text would break."""
    return CONTROL_TOKEN.findall(text)
