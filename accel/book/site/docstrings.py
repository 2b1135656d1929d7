"""A Sphinx extension for the site's API pages: read the method modules' plain-text docstrings as they are meant.

The docstrings are written for ``help()`` and the source, not for reStructuredText: a paragraph ending in ":" runs
straight into an indented list or table, and ``|D1|``, ``*args`` or ``name_`` are plain text. Before autodoc parses a
docstring, :func:`plain_text_to_rst` puts blank lines where a list starts or ends, shows an indented block that is no
list (a formula, a small table) as a text block with its lines and columns kept, and escapes the characters reST would
read as markup; `code` in single backticks is shown as code. Doctest examples (``>>>``) pass unchanged.
"""

from __future__ import annotations

import re

_LIST_ITEM = re.compile(r"^(\s*)([*\-+]|\d+[.)]|\(\d+\))\s+")
_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")  # inline literals, and `code` in single backticks
_MARKUP = re.compile(r"([|*])")  # substitution references and emphasis, when meant as plain text
_TRAILING_UNDERSCORE = re.compile(r"(\w)_(?=[\s\-.,:;!?/'\")\]}>]|$)")  # name_ would be a hyperlink reference


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _escape(line: str) -> str:
    """Escape reST markup characters outside inline literals, keeping a leading list marker."""
    item = _LIST_ITEM.match(line)
    head, rest = (line[: item.end()], line[item.end():]) if item else ("", line)
    parts = _LITERAL.split(rest)
    for i in range(0, len(parts), 2):  # the even parts are outside literals
        parts[i] = _TRAILING_UNDERSCORE.sub(r"\1\\_", _MARKUP.sub(r"\\\1", parts[i]))
    for i in range(1, len(parts), 2):  # `code`, as the docstrings mean it (reST would set it in italics)
        parts[i] = parts[i] if parts[i].startswith("``") else f"`{parts[i]}`"
    return head + "".join(parts)


def plain_text_to_rst(lines: list[str]) -> list[str]:
    """Return ``lines`` (one docstring, dedented) as reStructuredText that reads like the plain text."""
    out: list[str] = []

    def blank() -> None:
        if out and out[-1]:
            out.append("")

    doctest = False  # inside a >>> example and its output, up to the next blank line
    literal = None  # inside an indented block kept as written: the indentation of its parent
    item_column = None  # inside a list item: the column its text starts at (continuation lines align to it)
    paragraph = 0  # the indentation of the current ordinary paragraph
    shift = 0  # a list is moved left to its paragraph's indentation (indented, reST would make it a block quote)
    for line in lines:
        if not line.strip():
            doctest = False
            out.append("")
            continue
        indent = _indent(line)
        if literal is not None:
            if indent > literal:
                out.append(line[shift:] if line[:shift].isspace() else line)
                continue
            literal = None
            blank()
        if doctest or line.lstrip().startswith(">>>"):
            if not doctest:
                blank()
            doctest = True
            out.append(line)
            continue
        item = _LIST_ITEM.match(line)
        parent = paragraph if item_column is None else item_column
        if item:
            if item_column is None:
                blank()
                shift = max(0, indent - paragraph)
            item_column = item.end()
        elif item_column is not None and indent == item_column:
            pass  # the item's text goes on
        elif indent > parent:  # an indented block that is no list (a formula, a table): its lines and columns kept
            blank()
            shift = shift if item_column is not None else 0
            out += [" " * (parent - shift) + ".. code-block:: text", "", line[shift:]]
            literal = parent
            continue
        else:
            if item_column is not None or indent != _indent(out[-1] if out else line):
                blank()
            item_column = None
            paragraph = indent
            shift = 0
        out.append(_escape(line[shift:] if line[:shift].isspace() else line))
    return out


def _process(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = plain_text_to_rst(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
