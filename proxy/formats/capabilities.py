"""What a deployment's model can be asked for, where a vendor's models differ.

A translation maps `reasoning_effort` to Anthropic's `thinking`, `thinking` to
`reasoning_effort`, and `response_format` to Anthropic's structured outputs, but a vendor
rejects them (a 400 the client would be blamed for) on models that lack the feature. These
tables name those models by the prefix of their id; a model no table names (a new model, a
private alias) is taken to have the newer features.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = [
    "anthropic_structured_outputs",
    "anthropic_thinks",
    "openai_reasons",
    "openai_samples",
]

# Anthropic models without extended thinking (3.7 Sonnet and every Claude 4 have it).
_ANTHROPIC_NO_THINKING = (
    "claude-3-5",
    "claude-3-haiku",
    "claude-3-opus",
    "claude-3-sonnet",
    "claude-2",
    "claude-instant",
)
# Anthropic models without structured outputs (`output_config.format`, strict tools): the
# feature came with the 4.5 generation.
_ANTHROPIC_NO_STRUCTURED = (
    "claude-3",
    "claude-2",
    "claude-instant",
    "claude-sonnet-4-0",
    "claude-sonnet-4-2025",
    "claude-opus-4-0",
    "claude-opus-4-1",
    "claude-opus-4-2025",
)
# OpenAI's reasoning models: they take `reasoning_effort`, and no `temperature` or `top_p`
# but the default (1); `gpt-5-chat` is not one.
_OPENAI_REASONING = ("o1", "o3", "o4", "gpt-5")
_NOT_REASONING = ("gpt-5-chat",)
# Other OpenAI-shaped models that take `reasoning_effort` (the rest answer it with a 400):
# open-weight gpt-oss, and the Gemini models litellm gives a thinking budget.
_REASONING = (*_OPENAI_REASONING, "gpt-oss", "gemini-2.5", "gemini-3")


def _bare(model: str) -> str:
    """The model id without a provider or region prefix (`openai/gpt-5`, `us.anthropic.x`)."""
    return model.rsplit("/", 1)[-1].lower()


@lru_cache(maxsize=1024)  # model names come from the config: few
def anthropic_thinks(model: str) -> bool:
    return not _bare(model).startswith(_ANTHROPIC_NO_THINKING)


@lru_cache(maxsize=1024)  # model names come from the config: few
def anthropic_structured_outputs(model: str) -> bool:
    return not _bare(model).startswith(_ANTHROPIC_NO_STRUCTURED)


@lru_cache(maxsize=1024)  # model names come from the config: few
def openai_reasons(model: str) -> bool:
    bare = _bare(model)
    return bare.startswith(_REASONING) and not bare.startswith(_NOT_REASONING)


@lru_cache(maxsize=1024)  # model names come from the config: few
def openai_samples(model: str) -> bool:
    """False for a model that refuses `temperature` and `top_p` other than 1."""
    bare = _bare(model)
    return not bare.startswith(_OPENAI_REASONING) or bare.startswith(_NOT_REASONING)
