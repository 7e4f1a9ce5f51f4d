"""A small HTML report document: titled sections of text, key-value lists, tables, images and image tables.

No JavaScript and no external resources: images are embedded as base64 PNG data URIs (one self-contained
file, the default) or written as PNG files into `assets/` beside the HTML and referenced by relative paths.
All text is HTML-escaped. Build with `Report(title).section(heading).add_*(...)`, then `write(out_dir)`.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;color:#1d232b;
padding:0 16px} h1{font-size:24px;margin-bottom:2px}
h2{font-size:19px;border-bottom:1px solid #d7dce2;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px} .sub{color:#5b6674;margin-top:0}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #d7dce2;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f1f4f7} td.l,th.l{text-align:left} tr.em td{font-weight:600;background:#fafbe8}
.imgs{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0} figcaption{font-size:12px;color:#4a5562;max-width:640px}
img.px{image-rendering:pixelated} td.cell{text-align:center} td.cell img{display:block;margin:0 auto 2px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
details{margin:8px 0} .note{font-size:13px;color:#5b6674}
"""


def png_bytes(image: Union[np.ndarray, bytes]) -> bytes:
    """uint8 (H, W, 3|4) array -> PNG bytes (PNG bytes pass through)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def fmt(v: Any, digits: int = 3) -> str:
    """Numbers for tables: floats to `digits` significant decimals, NaN/None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


@dataclass
class Img:
    png: bytes
    caption: str = ""
    width: Optional[int] = None  # display width in CSS pixels (None = natural size)
    pixelated: bool = False  # nearest-neighbour upscaling (tiny sandbox images)


@dataclass
class Section:
    heading: str
    level: int = 2
    blocks: List[tuple] = field(default_factory=list)

    def add_text(self, text: str, note: bool = False) -> "Section":
        self.blocks.append(("text", text, note))
        return self

    def add_kv(self, items: Dict[str, Any], title: Optional[str] = None) -> "Section":
        self.blocks.append(("kv", dict(items), title))
        return self

    def add_table(self, rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None,
                  title: Optional[str] = None, emphasize: Optional[str] = None, digits: int = 3) -> "Section":
        """rows: dicts; `columns` picks and orders them (default: every key, first-seen order); text columns are
        left-aligned; rows whose first column equals `emphasize` are highlighted."""
        cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
        self.blocks.append(("table", [dict(r) for r in rows], cols, title, emphasize, digits))
        return self

    def add_image(self, image, caption: str = "", width: Optional[int] = None, pixelated: bool = False) -> "Section":
        self.blocks.append(("images", [Img(png_bytes(image), caption, width, pixelated)]))
        return self

    def add_images(self, images: Sequence[Img]) -> "Section":
        self.blocks.append(("images", list(images)))
        return self

    def add_image_table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None
                        ) -> "Section":
        """A table whose cells are text or `Img` (e.g. source | edit per editor, with scores under each)."""
        self.blocks.append(("imgtable", list(header), [list(r) for r in rows], title))
        return self

    def add_pre(self, text: str, summary: Optional[str] = None) -> "Section":
        """Preformatted text, collapsed under `summary` when given."""
        self.blocks.append(("pre", text, summary))
        return self


class Report:
    def __init__(self, title: str, subtitle: Optional[str] = None):
        self.title = title
        self.subtitle = subtitle
        self.sections: List[Section] = []

    def section(self, heading: str, level: int = 2) -> Section:
        s = Section(heading, level)
        self.sections.append(s)
        return s

    # ------------------------------------------------------------------ rendering
    def to_html(self, embed: bool = True, asset_dir: Optional[str] = None, asset_prefix: str = "assets") -> str:
        """The document. With `embed=False`, images are written into `asset_dir` and linked as
        `asset_prefix/<file>` (relative to the HTML file)."""
        if not embed and not asset_dir:
            raise ValueError("embed=False needs an asset_dir for the PNG files")
        self._n_img = 0
        self._embed, self._asset_dir, self._prefix = embed, asset_dir, asset_prefix
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               '<meta name="viewport" content="width=device-width, initial-scale=1">',
               f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        sub = self.subtitle or ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.append(f'<p class="sub">{e(sub)}{" · " if sub else ""}generated {e(stamp)}</p>')
        for s in self.sections:
            out.append(f"<h{s.level}>{e(s.heading)}</h{s.level}>")
            for b in s.blocks:
                out.append(getattr(self, "_" + b[0])(*b[1:]))
        out.append("</body></html>")
        return "\n".join(out)

    def _src(self, img: Img) -> str:
        self._n_img += 1
        if self._embed:
            return "data:image/png;base64," + base64.b64encode(img.png).decode("ascii")
        slug = re.sub(r"[^a-z0-9]+", "_", img.caption.lower())[:40].strip("_") or "image"
        name = f"{self._n_img:03d}_{slug}.png"
        os.makedirs(self._asset_dir, exist_ok=True)
        with open(os.path.join(self._asset_dir, name), "wb") as f:
            f.write(img.png)
        return f"{self._prefix}/{name}"

    def _img_tag(self, img: Img) -> str:
        w = f' width="{int(img.width)}"' if img.width else ""
        cls = ' class="px"' if img.pixelated else ""
        return f'<img src="{self._src(img)}" alt="{html.escape(img.caption or "image")}"{w}{cls}>'

    def _text(self, text: str, note: bool) -> str:
        return f'<p{" class=note" if note else ""}>{html.escape(text)}</p>'

    def _kv(self, items: Dict[str, Any], title: Optional[str]) -> str:
        e = html.escape
        rows = "".join(f'<tr><th class="l">{e(str(k))}</th><td class="l">{e(fmt(v))}</td></tr>'
                       for k, v in items.items())
        return (f"<h3>{e(title)}</h3>" if title else "") + f"<table>{rows}</table>"

    def _table(self, rows, cols, title, emphasize, digits) -> str:
        e = html.escape
        if not rows:
            return (f"<h3>{e(title)}</h3>" if title else "") + '<p class="note">(no rows)</p>'
        text_cols = {c for c in cols if any(isinstance(r.get(c), str) for r in rows)}
        head = "".join(f'<th class="{"l" if c in text_cols else ""}">{e(str(c))}</th>' for c in cols)
        body = []
        for r in rows:
            em = emphasize is not None and (str(r.get(cols[0])) == str(emphasize) or r.get("category") == emphasize)
            tds = "".join(f'<td class="{"l" if c in text_cols else ""}">{e(fmt(r.get(c), digits))}</td>' for c in cols)
            body.append(f'<tr{" class=em" if em else ""}>{tds}</tr>')
        return (f"<h3>{e(title)}</h3>" if title else "") + f"<table><tr>{head}</tr>{''.join(body)}</table>"

    def _images(self, imgs: List[Img]) -> str:
        figs = [f"<figure>{self._img_tag(i)}<figcaption>{html.escape(i.caption)}</figcaption></figure>" for i in imgs]
        return f'<div class="imgs">{"".join(figs)}</div>'

    def _imgtable(self, header, rows, title) -> str:
        e = html.escape
        head = "".join(f'<th class="l">{e(str(h))}</th>' for h in header)
        body = []
        for r in rows:
            cells = []
            for c in r:
                if isinstance(c, Img):
                    cap = "<br>".join(e(line) for line in c.caption.split("\n"))
                    cells.append(f'<td class="cell">{self._img_tag(c)}<span class="note">{cap}</span></td>')
                else:
                    cells.append(f'<td class="l">{"<br>".join(e(line) for line in str(c).split(chr(10)))}</td>')
            body.append(f"<tr>{''.join(cells)}</tr>")
        return (f"<h3>{e(title)}</h3>" if title else "") + f"<table><tr>{head}</tr>{''.join(body)}</table>"

    def _pre(self, text: str, summary: Optional[str]) -> str:
        pre = f"<pre>{html.escape(text)}</pre>"
        return f"<details><summary>{html.escape(summary)}</summary>{pre}</details>" if summary else pre

    def write(self, out_dir: str, embed: bool = True, name: str = "index.html") -> str:
        """Write `<out_dir>/<name>` (and `<out_dir>/assets/*.png` when not embedding). Returns the HTML path."""
        os.makedirs(out_dir, exist_ok=True)
        text = self.to_html(embed=embed, asset_dir=None if embed else os.path.join(out_dir, "assets"))
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @property
    def image_count(self) -> int:
        n = 0
        for s in self.sections:
            for b in s.blocks:
                if b[0] == "images":
                    n += len(b[1])
                elif b[0] == "imgtable":
                    n += sum(isinstance(c, Img) for r in b[2] for c in r)
        return n
