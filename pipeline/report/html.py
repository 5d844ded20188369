"""The report's building blocks: escaped text, tables, collapsible blocks, plotly figures as
``<div>``s (plotly.js itself is written once beside the page, see ``pipeline.report.page``), and
images copied (downsized) into the report's ``assets/`` folder so that the page works offline from
its folder."""
from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

# plotly's toolbar without its logo; figures follow the width of the page
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value for a table cell: 4 significant digits for floats, '-' for missing ones."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def table(rows: Iterable[Iterable[Any]], header: Optional[Iterable[str]] = None, cls: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def grid(items: Iterable[tuple[str, Any]]) -> str:
    """Name / value pairs as a compact grid of cells, as many columns as the page's width takes."""
    cells = "".join(f'<div><span title="{esc(k)}">{esc(k)}</span><b title="{esc(fmt(v))}">{esc(fmt(v))}</b></div>'
                    for k, v in items)  # titles: the whole of a value cut short by the cell
    return f'<div class="metrics">{cells}</div>'


def key_values(values: dict) -> str:
    """A two-column table of a flat dict; nested dicts become ``a.b`` keys."""
    return table(flatten(values).items())


def flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def figure(fig, height: int = 420, top: int = 40) -> str:
    """A plotly figure as a ``<div>`` (plotly.js is loaded once by the page); ``top``: the margin
    above the plot, where its title goes."""
    fig.update_layout(height=height, margin=dict(l=40, r=20, t=top, b=40), template="plotly_white",
                      title_font_size=15)
    return f'<div class="plot">{fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)}</div>'


class Assets:
    """Files the page shows, copied into ``<report>/assets/`` under unique names; images wider than
    ``max_width`` are downsized (the page shows them small; the originals stay in the workspace)."""

    def __init__(self, report_dir: Path, max_width: int = 480):
        self.root = Path(report_dir)
        self.folder = self.root / "assets"
        self.max_width = max_width
        self.names: set[str] = set()

    def _name(self, stem: str, suffix: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        name, k = f"{base}{suffix}", 1
        while name in self.names:
            name, k = f"{base}-{k}{suffix}", k + 1
        self.names.add(name)
        return self.folder / name

    def copy(self, path: Path, stem: Optional[str] = None) -> str:
        """Copy a file (a video) as it is; returns its path relative to the page."""
        target = self._name(stem or Path(path).stem, Path(path).suffix.lower())
        shutil.copy2(path, target)
        return target.relative_to(self.root).as_posix()

    def image(self, pixels: np.ndarray, stem: str, max_width: Optional[int] = None) -> str:
        """Save an image array (H, W[, C]; uint8, or float in [0, 1]) as PNG, at most ``max_width``
        (default: the report's) wide; returns its path relative to the page."""
        from PIL import Image

        img = np.asarray(pixels)
        if img.dtype != np.uint8:
            img = (np.clip(np.nan_to_num(img.astype(np.float64)), 0, 1) * 255 + 0.5).astype(np.uint8)
        pil = Image.fromarray(img)
        width = max_width or self.max_width
        if pil.width > width:
            pil = pil.resize((width, max(1, round(pil.height * width / pil.width))), Image.LANCZOS)
        target = self._name(stem, ".png")
        pil.save(target, optimize=True)
        return target.relative_to(self.root).as_posix()


def read_json_file(path: Path) -> Optional[dict]:
    """A JSON object from a file, or None when it is missing or unreadable (the report shows what exists)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def img_tag(src: str, caption: str, width: Optional[int] = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    return (f'<figure class="thumb"><img src="{esc(src)}" alt="{esc(caption)}"{style}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def read_image(path: Path, background: float = 1.0) -> Optional[np.ndarray]:
    """An image file as float RGB in [0, 1] (alpha composited on ``background``); None when it
    cannot be read (a moved dataset, a corrupt file): the report shows what it can."""
    from datasets.scene import SceneError, load_image_file

    try:
        img = load_image_file(path).astype(np.float64)  # every image mode, as the training stages load it
    except SceneError:
        return None
    if img.shape[-1] == 4:
        img = img[..., :3] * img[..., 3:] + background * (1 - img[..., 3:])
    return img[..., :3]


def colormap(values: np.ndarray, vmax: float, name: str = "inferno") -> np.ndarray:
    """A (H, W) array as a colour picture (H, W, 3) in [0, 1], 0 .. vmax."""
    from matplotlib import colormaps

    return colormaps[name](np.clip(values / max(vmax, 1e-12), 0, 1))[..., :3]
