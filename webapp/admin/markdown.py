"""Message text rendered as Markdown (CommonMark and tables), safely, for the admin pages.

Replies and prompts are Markdown far more often than not. The rendering keeps to what a
stored message may safely become on a page that allows no inline script (see the
Content-Security-Policy in ``auth.py``):

- raw HTML is off: ``<script>`` or ``<img onerror=...>`` in a message is shown as the text it is;
- a link keeps its target only for ``http:``, ``https:`` and ``mailto:`` (never ``javascript:``,
  ``vbscript:``, ``data:`` or ``file:``); any other link is left as the text it was typed as;
- an image is shown only when it is embedded PNG, JPEG, GIF or WebP data (``data:image/...``):
  nothing is fetched from elsewhere (the policy would refuse it anyway, and a fetch would tell
  a third party someone read the message); a web image becomes a link to it;
- blocks get ``dir="auto"`` so right-to-left text reads right to left, paragraph by paragraph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup, escape

LINK_SCHEMES = ("http://", "https://", "mailto:")
IMAGE_DATA = ("data:image/png;", "data:image/jpeg;", "data:image/gif;", "data:image/webp;")
# Blocks whose direction the browser should take from their own first strong character.
DIRECTED_BLOCKS = frozenset({"paragraph_open", "heading_open", "blockquote_open", "bullet_list_open", "ordered_list_open", "table_open"})


def is_safe_link(url: str) -> bool:
    """Return whether a Markdown link or image target may stay a link on the page (web or mail only)."""
    return url.strip().lower().startswith(LINK_SCHEMES)


def is_embedded_image(url: str) -> bool:
    """Return whether an image target is embedded image data the page may show (no request leaves)."""
    return url.strip().lower().startswith(IMAGE_DATA)


def _validate_link(url: str) -> bool:
    # markdown-it asks this for links and images alike: images are checked again when rendered.
    return is_safe_link(url) or is_embedded_image(url)


def _image(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env)
    if is_embedded_image(src):
        return f'<img class="md-image" src="{escape(src)}" alt="{escape(alt)}">'
    if is_safe_link(src):
        return f'<a href="{escape(src)}" rel="noreferrer noopener nofollow">[image: {escape(alt or src)}]</a>'
    return f"[image: {escape(alt)}]"


def _link_open(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    if is_embedded_image(str(token.attrGet("href") or "")):
        # Only images may be data: a link to data could carry a page of its own.
        token.attrSet("href", "#")
    token.attrSet("rel", "noreferrer noopener nofollow")
    return self.renderToken(tokens, idx, options, env)


def _fence(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    language = token.info.strip().split(" ")[0] if token.info else ""
    label = f'<span class="md-lang">{escape(language)}</span>' if language else ""
    return f'<div class="md-fence">{label}<pre class="code"><code>{escape(token.content)}</code></pre></div>\n'


def _code_block(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return f'<pre class="code"><code>{escape(tokens[idx].content)}</code></pre>\n'


def _table_open(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    # A wide table scrolls inside its own box, never the page.
    return '<div class="md-table">' + self.renderToken(tokens, idx, options, env)


def _table_close(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return self.renderToken(tokens, idx, options, env) + "</div>\n"


def _direction(state: Any) -> None:
    for token in state.tokens:
        if token.type in DIRECTED_BLOCKS:
            token.attrSet("dir", "auto")


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.validateLink = _validate_link  # type: ignore[method-assign]
    md.add_render_rule("image", _image)
    md.add_render_rule("link_open", _link_open)
    md.add_render_rule("fence", _fence)
    md.add_render_rule("code_block", _code_block)
    md.add_render_rule("table_open", _table_open)
    md.add_render_rule("table_close", _table_close)
    md.core.ruler.push("direction", _direction)
    return md


_MARKDOWN = _parser()


def render_markdown(text: Any) -> Markup:
    """Return message text rendered from Markdown as safe HTML (see the module's rules); anything not a string renders empty."""
    if not isinstance(text, str):
        return Markup("")
    return Markup(_MARKDOWN.render(text))
