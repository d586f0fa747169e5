"""The chat template behind /v1/chat/completions: where the server's template comes from, and rendering a
request's messages with it into one prompt.

GPT-2 was never trained on conversations and has no template of its own, so the server has one only when it
is given one: `gpt2kit serve --chat-template FILE` (a Jinja file, as transformers and vLLM use; the template
text itself is accepted too, as vLLM does), else the tokenizer folder's own (`chat_template` in
tokenizer_config.json, or transformers 4.57's chat_template.jinja). The template is compiled when the
server starts, so a syntax error stops it there; a template that refuses a conversation (its
`raise_exception`, an undefined name) is the client's 400.

    template = load_chat_template("chatml.jinja", tokenizer)     # None without one
    template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gpt2kit.serve.protocol import APIError
from gpt2kit.tokenizer import chat

logger = logging.getLogger(__name__)


class ChatTemplate:
    """A compiled chat template and where it came from (named in errors)."""

    def __init__(self, template: str, origin: str, special_tokens: dict[str, Any] | None = None) -> None:
        try:
            chat.compile_template(template)
        except ImportError:
            raise ValueError(
                f'the chat template ({origin}) needs jinja2: pip install "gpt2kit[serve]" (or jinja2)'
            ) from None
        except Exception as e:  # jinja2.TemplateSyntaxError, without importing jinja2 here
            line = getattr(e, "lineno", None)
            where = f" at line {line}" if line else ""
            raise ValueError(f"the chat template ({origin}) is not valid Jinja{where}: {e}") from None
        self.template = template
        self.origin = origin
        self.special_tokens = dict(special_tokens or {})

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text for one conversation; APIError 400 when the template refuses it. As transformers'
        apply_chat_template, the tokenizer's special tokens are visible in the template, and `variables`
        (a request's chat_template_kwargs) override them."""
        values = {"tools": None, "documents": None, **self.special_tokens, **(variables or {})}
        try:
            return chat.render(
                self.template,
                [messages],
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **values,
            )[0]
        except Exception as e:  # the template's raise_exception, an undefined name, a type error in it
            raise APIError(
                400,
                f"the chat template ({self.origin}) could not render these messages: {e}",
                param="messages",
            ) from None


def load_chat_template(source: str | os.PathLike | None, tokenizer) -> ChatTemplate | None:
    """The server's chat template: `source` (--chat-template: a file, or the template text itself), else
    the tokenizer's own; None when there is neither."""
    special = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
    if source is not None:
        text = str(source)
        path = Path(text)
        if "{{" not in text and "{%" not in text:
            if not path.is_file():
                raise FileNotFoundError(
                    f"--chat-template {text}: no such file; give a Jinja chat template file (or the template "
                    "text itself)"
                )
            return ChatTemplate(path.read_text(encoding="utf-8"), f"--chat-template {text}", special)
        return ChatTemplate(text, "--chat-template (inline)", special)
    templates = getattr(tokenizer, "chat_template", None)
    if templates is None:
        return None
    try:
        template = chat.pick(templates, None)
    except ValueError as e:
        logger.warning("the tokenizer's chat templates are not used: %s; or give --chat-template", e)
        return None
    return ChatTemplate(template, "the tokenizer's chat_template", special)
