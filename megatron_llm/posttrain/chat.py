"""Chat rendering with a Jinja chat template, and token-level masks for the assistant's turns.

The template is the Hugging Face convention: a Jinja string rendered with `messages` (dicts of `role` and
`content`), `add_generation_prompt`, `bos_token` and `eos_token`, in the same sandboxed environment
`transformers` uses, so the exported tokenizer renders the same text.

A conversation is tokenized as one text (exactly what `apply_chat_template` then `encode` gives), and the
assistant's tokens are found by rendering prefixes of the conversation: the text an assistant message adds
starts where the template's generation prompt for that turn ends. The end-of-document token closes the
conversation and is trained, so the model learns to stop. No BOS is added beyond what the tokenizer's
`encode` adds, as in pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

ROLES = ("system", "user", "assistant")

# Plain-text role headers; no special tokens needed, so it works with any tokenizer.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ChatTokenizer(Protocol):
    """What chat encoding needs of a tokenizer (megatron_llm.data.tokenizers.tokenizer provides it)."""

    eod_id: int

    def encode(self, text: str) -> list[int]: ...


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols],
                                        undefined=StrictUndefined)
    env.globals["raise_exception"] = raise_exception
    return env


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        from jinja2.exceptions import TemplateError

        self.source = source
        self._extra = {"bos_token": bos_token, "eos_token": eos_token}
        try:
            self._template = _environment().from_string(source)
        except TemplateError as error:
            raise ValueError(f"invalid chat template: {error}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self._extra)
        except TemplateError as error:
            raise ValueError(f"chat template failed: {error}") from None

    def assistant_spans(self, messages: list[dict], last_only: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of the assistant turns it trains on.

        A span runs from the end of the generation prompt before the assistant message to the end of the
        text that message adds (its content and the template's end-of-turn text).
        """
        full = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or (last_only and i != len(messages) - 1):
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not (full.startswith(through) and through.startswith(before)):
                raise ValueError("the chat template does not render conversations as prefixes of each other, "
                                 "so assistant turns cannot be located")
            if len(through) > len(before):
                spans.append((len(before), len(through)))
        return full, spans


@dataclass
class EncodedChat:
    """Token ids of one conversation and, per token, whether the loss is taken on it."""

    ids: list[int]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_chat(messages: list[dict], template: ChatTemplate, tokenizer: ChatTokenizer,
                last_only: bool = False) -> EncodedChat:
    """Tokenize a rendered conversation; tokens of assistant turns (and the closing EOD) are trained.

    Token boundaries come from encoding the text up to each span boundary: the tokens it shares with the
    whole conversation's encoding lie before the boundary.
    """
    full, spans = template.assistant_spans(messages, last_only=last_only)
    ids = list(tokenizer.encode(full))
    trained = [False] * len(ids)
    for start, end in spans:
        first = _common_prefix(ids, tokenizer.encode(full[:start]))
        last = len(ids) if end == len(full) else _common_prefix(ids, tokenizer.encode(full[:end]))
        for k in range(first, last):
            trained[k] = True
    if messages and messages[-1]["role"] == "assistant" and (not ids or ids[-1] != tokenizer.eod_id):
        ids.append(tokenizer.eod_id)
        trained.append(True)
    return EncodedChat(ids, trained)


def encode_prompt(messages: list[dict], template: ChatTemplate, tokenizer: ChatTokenizer) -> list[int]:
    """Token ids of a conversation followed by the generation prompt (what the model continues)."""
    return list(tokenizer.encode(template.render(messages, add_generation_prompt=True)))


def message_problem(messages: object) -> tuple[str, str] | None:
    """(why a `messages` value cannot be trained on, the kind of problem for counting), or None."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list", "malformed messages"
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {k} is not an object", "malformed messages"
        role = message.get("role")
        if role is None:
            return f"message {k} has no 'role'", "missing role"
        if role not in ROLES:
            return f"message {k} has unknown role {role!r} (expected one of {', '.join(ROLES)})", "unknown role"
        if not isinstance(message.get("content"), str):
            return f"message {k} ({role}) has no text 'content'", "malformed messages"
        if role == "assistant" and not message["content"].strip():
            return f"message {k} is an empty assistant turn", "empty assistant turn"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn (nothing to train on)", "no assistant turn"
    return None
