"""Turn marked-up text (novel lines, reStructuredText, roff) into plain prose documents."""

from __future__ import annotations

import re
from collections.abc import Iterator

MIN_SECTION_CHARS = 1500  # short reST sections are merged into the next, so documents are not mostly headings


def unwrap(lines: list[str]) -> str:
    """Join hard-wrapped lines into one line per paragraph; paragraphs are separated by one blank line."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


_CHAPTER = re.compile(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$")


def chapters(lines: list[str]) -> Iterator[str]:
    """A novel's lines split at chapter headings (the front matter before the first chapter is dropped)."""
    current: list[str] | None = None
    for line in lines:
        if _CHAPTER.match(line.strip()):
            if current is not None:
                yield unwrap(current)
            current = ["Chapter " + line.split()[1].rstrip("."), ""]
        elif current is not None and not re.fullmatch(r"\s*(VOLUME|Volume)\s+[IVX]+\s*", line):
            current.append(line)
    if current is not None:
        yield unwrap(current)


# ---- reStructuredText -----------------------------------------------------------------------------------------

_HEADING_RULE = re.compile(r"^([=\-~^*#+\"'`])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::")
_PROSE_DIRECTIVES = {
    "note", "warning", "versionadded", "versionchanged", "deprecated", "seealso", "impl-detail", "attention",
    "function", "method", "class", "attribute", "data", "exception", "decorator", "describe", "option", "envvar",
    "cmdoption", "classmethod", "staticmethod", "coroutinemethod", "coroutinefunction", "decoratormethod", "opcode",
    "glossary", "rubric", "topic", "sidebar", "important", "tip", "hint", "caution", "admonition", "c:function",
    "c:type", "c:member", "c:macro", "c:var", "index",
}  # fmt: skip
_FIELD = re.compile(r"^\s*:[\w -]+:(\s|$)")
_ROLE = re.compile(r":[\w:+-]+:`(?:[~!])?([^`<]*?)(?:\s*<[^`>]*>)?`")
_TABLE_RULE = re.compile(r"^\s*[+=|-][-=+| ]*$")


def rst_to_lines(text: str) -> list[str]:
    """reST source with literal blocks, code directives, directive lines, options and tables removed."""
    out: list[str] = []
    skip_deeper_than: int | None = None  # inside a literal block: skip lines indented deeper than this
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if stripped.startswith(".."):
            directive = _DIRECTIVE.match(stripped)
            if not (directive and directive.group(1) in _PROSE_DIRECTIVES and directive.group(1) != "index"):
                skip_deeper_than = indent  # a code block, table, toctree or comment: drop its body
            out.append("")
            continue
        if stripped.startswith((">>>", "... ", "$ ")) or _FIELD.match(line) or _TABLE_RULE.match(line):
            continue
        if stripped.endswith("::"):
            skip_deeper_than = indent
            line = line.rstrip()[:-1]
            if line.strip() == ":":
                continue
        out.append(line)
    return out


def _inline(text: str) -> str:
    text = _ROLE.sub(lambda m: m.group(1), text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`<]+?)(?:\s*<[^`>]*>)?`_{1,2}", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", text)


def rst_sections(text: str) -> Iterator[str]:
    """Prose documents of one reST file, split at headings (short sections merged forward)."""
    lines = rst_to_lines(text)
    sections: list[list[str]] = [[]]
    for i, line in enumerate(lines):
        if _HEADING_RULE.match(line):
            if i > 0 and lines[i - 1].strip() and not _HEADING_RULE.match(lines[i - 1]):
                title = sections[-1].pop()
                sections.append([title, ""])
            continue
        sections[-1].append(line)
    pending = ""
    for section in sections:
        body = _inline(unwrap(section))
        pending = f"{pending}\n\n{body}".strip() if pending else body
        if len(pending) >= MIN_SECTION_CHARS:
            yield pending
            pending = ""
    if pending.strip():
        yield pending


# ---- roff (man pages) ------------------------------------------------------------------------------------------

_ROFF_GLYPHS = {
    "em": "--", "en": "-", "aq": "'", "dq": '"', "bu": "*", "co": "(c)", "rs": "\\", "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "mu": "x", ">=": ">=", "<=": "<=", "!=": "!=", "->": "->", "<-": "<-", "hy": "-",
    "ti": "~", "ha": "^", "pl": "+", "mi": "-", "eq": "=", "sl": "/", "ga": "`", "tm": "(tm)", "de": " degrees",
}  # fmt: skip
_FONT_MACROS = {"B", "I", "SM", "SB"}
_ALTERNATING_MACROS = {"BR", "RB", "IR", "RI", "BI", "IB"}
_BREAK_MACROS = {"PP", "P", "LP", "sp", "TP", "IP", "HP", "RS", "RE", "SH", "SS", "EX", "EE", "nf", "fi", "TS", "TE"}


def _roff_escapes(text: str) -> str:
    text = re.sub(r'\\".*$', "", text)
    text = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", text)
    text = re.sub(r"\\\((..)", lambda m: _ROFF_GLYPHS.get(m.group(1), ""), text)
    text = re.sub(r"\\\[([^\]]*)\]", lambda m: _ROFF_GLYPHS.get(m.group(1), ""), text)
    text = re.sub(r"\\\*(\(..|\[[^\]]*\]|.)", "", text)
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace("\\~", " ")
    return re.sub(r"\\[&|^c%:/,]", "", text).replace("\\\\", "\\")


def _macro_args(rest: str) -> list[str]:
    return [quoted if quoted or not bare else bare for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', rest)]


def roff_to_text(source: str) -> str:
    """Plain text of a man page: macros applied roughly, escapes resolved, tables dropped; empty for `.so` aliases."""
    blocks: list[str] = []  # paragraphs (filled) and no-fill blocks (kept line by line, e.g. synopses and examples)
    filled: list[str] = []
    verbatim: list[str] = []
    mode = "fill"

    def flush() -> None:
        if filled:
            blocks.append(" ".join(filled))
            filled.clear()
        if verbatim:
            blocks.append("\n".join(verbatim).strip("\n"))
            verbatim.clear()

    for raw in source.splitlines():
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].strip().partition(" ")
            if macro == "so":
                return ""
            if mode == "table":
                mode = "fill" if macro == "TE" else "table"
                continue
            if macro in _BREAK_MACROS:
                flush()
            mode = {"nf": "verbatim", "EX": "verbatim", "fi": "fill", "EE": "fill", "TS": "table"}.get(macro, mode)
            if macro in ("SH", "SS", "IP", "TP") or macro in _FONT_MACROS or macro in _ALTERNATING_MACROS:
                args = _macro_args(rest)
                if macro in ("IP", "TP"):
                    args = args[:1]
                text = _roff_escapes(("" if macro in _ALTERNATING_MACROS else " ").join(args))
                if text.strip():
                    (verbatim if mode == "verbatim" else filled).append(text)
            if macro in ("SH", "SS"):
                flush()
            continue
        if mode == "table":
            continue
        text = _roff_escapes(raw)
        if mode == "verbatim":
            verbatim.append(text.rstrip())
        elif text.strip():
            filled.append(text.strip())
        else:
            flush()
    flush()
    return "\n\n".join(block for block in blocks if block.strip())
