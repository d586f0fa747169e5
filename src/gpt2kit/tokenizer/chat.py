"""Chat templates: a Jinja template that turns a conversation (a list of {"role", "content"} messages) into
the text a chat model was trained on, as transformers' apply_chat_template renders it.

jinja2 is optional and imported only here, when a template is rendered. A tokenizer keeps its template(s) in
`chat_template`: one string, or a dict of named templates ("default", "tool_use", ...).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "chat_template.jinja"  # transformers 4.57's file for the default template
TEMPLATES_DIR = "additional_chat_templates"  # ... and its folder of named ones (<name>.jinja)


def pick(templates: str | dict[str, str] | None, chat_template: str | None, tools: Any = None) -> str:
    """The template to render: `chat_template` itself, or the name of one of `templates`, or the tokenizer's
    own (its "tool_use" one when tools are given, else "default"), as transformers' get_chat_template."""
    if isinstance(templates, dict):
        if chat_template is not None and chat_template in templates:
            return templates[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ValueError(
                f"this tokenizer has several chat templates ({', '.join(templates)}) and none named 'default'; "
                "pass chat_template= with one of these names or a template string"
            )
        return chat_template
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError(
            "tokenizer.chat_template is not set and no chat_template= was passed; GPT-2 has no chat template of "
            "its own: pass a Jinja template string, or set tokenizer.chat_template"
        )
    return templates


@lru_cache(maxsize=16)
def _compile(template: str):
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need jinja2: pip install jinja2") from None

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # as transformers: not Jinja's own filter, which escapes HTML characters
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def compile_template(template: str):
    """The compiled template (cached), so that a syntax error or a missing jinja2 shows before any
    conversation is rendered (`gpt2kit serve --chat-template` checks its template at start)."""
    return _compile(template)


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def render(
    template: str,
    conversations: list[list[dict[str, Any]]],
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    **variables: Any,
) -> list[str]:
    """Each conversation rendered with `template`; `variables` (special tokens, tools, documents, ...) are
    visible in the template. continue_final_message=True leaves the last message open (no end-of-turn
    text after it), so the model continues it."""
    if continue_final_message and add_generation_prompt:
        raise ValueError(
            "continue_final_message=True continues the last message, add_generation_prompt=True starts a new "
            "one; pass only one of them"
        )
    compiled = _compile(template)
    out = []
    for chat in conversations:
        chat = list(getattr(chat, "messages", chat))
        if continue_final_message:
            last = dict(chat[-1])
            if not isinstance(last.get("content"), str):
                raise ValueError("continue_final_message=True needs a final message whose content is a str")
            last["content"] += _CONTINUE_TAG
            chat[-1] = last
        text = compiled.render(messages=chat, add_generation_prompt=add_generation_prompt, **variables)
        if continue_final_message:
            # cut at the tag after the final message's text: what follows it closes the turn (transformers' way)
            final = chat[-1]["content"][: -len(_CONTINUE_TAG)]
            if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
                raise ValueError(
                    "continue_final_message=True, but the chat template drops part of the final message; "
                    "check the template against the final message"
                )
            at = text.rindex(_CONTINUE_TAG.strip())
            text = text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        out.append(text)
    return out


def from_config(value: Any) -> str | dict[str, str] | None:
    """tokenizer_config.json's chat_template: a str, or [{"name": ..., "template": ...}, ...] -> a dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list) and all(isinstance(t, dict) and {"name", "template"} <= set(t) for t in value):
        return {t["name"]: t["template"] for t in value}
    raise ValueError(
        f"chat_template must be a str or a list of {{'name': ..., 'template': ...}} entries, got {value!r:.80}"
    )


def to_config(templates: str | dict[str, str]) -> str | list[dict[str, str]]:
    """The tokenizer_config.json form of chat_template, which transformers reads as well."""
    if isinstance(templates, dict):
        return [{"name": name, "template": t} for name, t in templates.items()]
    return templates


def read_folder(folder: Path) -> str | dict[str, str] | None:
    """The templates a transformers 4.57 folder keeps in files: chat_template.jinja (the default one) and
    additional_chat_templates/<name>.jinja. None when it has neither."""
    default = folder / TEMPLATE_FILE
    named = {}
    if (folder / TEMPLATES_DIR).is_dir():
        named = {
            p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / TEMPLATES_DIR).glob("*.jinja"))
        }
    if not named:
        return default.read_text(encoding="utf-8") if default.is_file() else None
    if default.is_file():
        named = {"default": default.read_text(encoding="utf-8"), **named}
    return named
