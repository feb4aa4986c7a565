"""The report as one list of blocks, rendered as markdown and as a self-contained HTML page, and written
to its folder atomically.

The HTML page embeds every plot as a base64 ``data:`` URI, so ``report.html`` sent alone shows them; the
markdown links the PNG files written beside it.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure


def png_bytes(figure: Figure, **savefig: Any) -> bytes:
    """A figure rendered to PNG once (the file and the HTML page share the bytes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **savefig)
    return buffer.getvalue()


@dataclass
class Doc:
    """A report as a list of blocks, so the markdown and the HTML page show exactly the same content."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    """PNG bytes of every image block, by file name (written beside report.md, embedded in report.html)."""

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        """A paragraph; **bold**, `code` and [text](link) are understood in both renderings."""
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        """A table of display strings (format numbers first; '**x**' cells are shown bold)."""
        self.blocks.append(("table", frame.astype(str)))

    def image(self, name: str, alt: str, figure: Figure | bytes) -> None:
        """A plot: written as ``name`` beside the report and embedded in the HTML page."""
        self.images[name] = figure if isinstance(figure, bytes) else png_bytes(figure)
        self.blocks.append(("image", (name, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                out += ["#" * value[0] + " " + value[1], ""]
            elif kind == "para":
                out += [value, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":

                def row(cells: Iterable[str]) -> str:
                    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

                out += [row(value.columns), row("---" for _ in value.columns)]
                out += [row(r) for r in value.itertuples(index=False)] + [""]
            elif kind == "image":
                out += [f"![{value[1]}]({value[0]})", ""]
            elif kind == "code":
                out += ["```bash", value, "```", ""]
        return "\n".join(out)

    @staticmethod
    def inline(text: str) -> str:
        text = html.escape(str(text), quote=False)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{html.escape(m[2])}">{m[1]}</a>', text)

    def html(self) -> str:
        body = [f"<h1>{self.inline(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{self.inline(value[1])}</h{value[0]}>")
            elif kind == "para":
                body.append(f"<p>{self.inline(value)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{self.inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{self.inline(c)}</th>" for c in value.columns)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{self.inline(c)}</td>" for c in r) + "</tr>"
                    for r in value.itertuples(index=False)
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "image":
                data = base64.b64encode(self.images[value[0]]).decode("ascii")
                body.append(
                    f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(value[1])}" '
                    f'title="{html.escape(value[0])}"></p>'
                )
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(value)}</code></pre>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
            "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
            "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
            "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}code{font-size:13px}"
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def write_atomically(target: Path, files: dict[str, Any]) -> None:
    """Write the report's files into a fresh temporary folder beside ``target`` and swap it in.

    ``files`` maps a file name to text, bytes, a DataFrame (written as CSV) or a Figure (written as PNG).
    The old report, if any, is moved aside only once the new one is complete, and removed after the swap."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # not mkdtemp: its 0700 mode would stick to the finished report
    try:
        for name, content in files.items():
            path = staging / name
            if isinstance(content, pd.DataFrame):
                content.to_csv(path, index=False)
            elif isinstance(content, Figure):
                content.savefig(path)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        previous = None
        if target.exists():
            previous = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            target.rename(previous)
        staging.rename(target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
