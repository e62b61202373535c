"""A tiny document model rendered twice: Markdown (plots linked relatively) and self-contained HTML
(plots inlined as base64), so a report reads the same on GitHub and in a browser."""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)  # (kind, payload) pairs

    def heading(self, text: str):
        self.blocks.append(("h2", text))

    def paragraph(self, text: str):
        self.blocks.append(("p", text))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def bullets(self, items: list[str]):
        self.blocks.append(("ul", list(items)))

    def table(self, df: pd.DataFrame):
        self.blocks.append(("table", df))

    def image(self, caption: str, path: Path):
        self.blocks.append(("img", (caption, Path(path))))

    @property
    def images(self) -> list[Path]:
        return [payload[1] for kind, payload in self.blocks if kind == "img"]

    def markdown(self, relative_to: Path) -> str:
        lines = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "h2":
                lines += [f"## {payload}", ""]
            elif kind == "p":
                lines += [payload, ""]
            elif kind == "code":
                lines += ["```", payload.rstrip(), "```", ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in payload] + [""]
            elif kind == "table":
                lines += [_markdown_table(payload), ""]
            elif kind == "img":
                caption, path = payload
                lines += [f"![{caption}]({Path(os.path.relpath(path, relative_to)).as_posix()})", ""]
        return "\n".join(lines)

    def html(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
                 "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for kind, payload in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{html.escape(payload)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{html.escape(payload)}</p>")
            elif kind == "code":
                parts.append(f"<pre>{html.escape(payload)}</pre>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in payload) + "</ul>")
            elif kind == "table":
                parts.append(payload.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}"))
            elif kind == "img":
                caption, path = payload
                data = base64.b64encode(Path(path).read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, md_path: Path, html_path: Path) -> None:
        md_path.write_text(self.markdown(md_path.parent))
        html_path.write_text(self.html())


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
