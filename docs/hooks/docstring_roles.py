"""MkDocs hook: render the Sphinx-style roles of vlens' docstrings as code links.

vlens' docstrings cross-reference with reST roles (``:class:`ModelInfo```, ``:func:`apply```,
``:data:`SCORES```). Markdown keeps them as literal text, so after a page is rendered this hook
turns each ``:role:<code>name</code>`` into ``<code>name</code>``, linked to the object's anchor
when the API page documents it (the anchor in the same module first, then a unique match), and
drops the reST literal-block marker ``::`` at the end of a paragraph.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|obj|exc):<code>~?([\w.]+)</code>")
ANCHOR = re.compile(r'id="(vlens(?:\.\w+)+)"')
MODULE_HEADING = re.compile(
    r'id="(vlens(?:\.\w+)*)" class="doc doc-heading">\s*<span class="doc doc-object-name doc-module-name">'
)


def _resolve(name: str, module: str | None, anchors: set[str]) -> str | None:
    if name in anchors:
        return name
    if module and f"{module}.{name}" in anchors:
        return f"{module}.{name}"
    matches = sorted(a for a in anchors if a.endswith("." + name))
    return matches[0] if len(matches) == 1 else None


def on_page_content(html: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    if ":<code>" not in html and "::</p>" not in html:
        return html
    anchors = set(ANCHOR.findall(html))
    modules = [(m.start(), m.group(1)) for m in MODULE_HEADING.finditer(html)]

    def module_at(pos: int) -> str | None:
        current = None
        for start, name in modules:
            if start > pos:
                break
            current = name
        return current

    def replace(match: re.Match) -> str:
        name = match.group(1)
        target = _resolve(name, module_at(match.start()), anchors)
        shown = name.rsplit(".", 1)[-1] if match.group(0).split("<code>", 1)[1].startswith("~") else name
        code = f"<code>{shown}</code>"
        return f'<a href="#{target}">{code}</a>' if target else code

    html = ROLE.sub(replace, html)
    return html.replace("::</p>", ":</p>")
