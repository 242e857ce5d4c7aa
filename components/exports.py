"""Files a person can download from a run: the set (.safetensors), a PNG grid, an ImageFolder zip
and a GIF of the images evolving over the kept snapshots."""
from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from .sessions import RunRecord, Session

GIF_FRAME_MS = 250  # per kept snapshot
GIF_HOLD_MS = 1500  # the last frame stays on screen a little longer
SLIDE_PIXELS = 1200  # the downloaded PNG grid's longer side: sharp on a projected slide
KEEP_EXPORTS = 3  # export folders kept per session; older runs' downloads are deleted


def evolution_gif(run: RunRecord, path: Path) -> Path | None:
    """One frame per kept snapshot, each the composed grid of that moment."""
    frames = []
    for i in range(len(run.kept)):
        syn = run.set_at(i)
        if syn is not None:
            frames.append(syn.grid_image().convert("RGB"))
    if not frames:
        return None
    size = frames[-1].size
    frames = [f if f.size == size else f.resize(size, Image.NEAREST) for f in frames]
    durations = [GIF_FRAME_MS] * (len(frames) - 1) + [GIF_HOLD_MS]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False)
    return path


def save_current(session: Session, run: RunRecord, keep: int = 3) -> Path | None:
    """Save `run`'s latest set under a fresh name in the session's folder (so a gr.State holding
    the path changes); older saves beyond the last `keep` are deleted, leaving a reader time to finish."""
    syn = run.final
    if syn is None or session.closed:
        return None
    path = syn.save(session.new_file("current", ".safetensors"))
    saves = sorted(session.folder.glob("current-*.safetensors"))
    for old in saves[:-keep]:
        old.unlink(missing_ok=True)
    return path


def write_exports(session: Session, run: RunRecord) -> dict[str, Path]:
    """All downloads of `run`; returns kind -> path (empty if the page was closed). Only the
    session's last KEEP_EXPORTS export folders are kept."""
    if run.final is None or session.closed:
        return {}
    syn = run.final
    stem = f"{run.method}-{run.dataset_name.replace(':', '_').replace('/', '_')}-ipc{run.ipc}-step{syn.steps}"
    folder = session.folder / f"export-{session.saves + 1:04d}"
    session.saves += 1
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(session.folder.glob("export-*"))[:-KEEP_EXPORTS]:
        shutil.rmtree(old, ignore_errors=True)
    files = {"safetensors": syn.save(folder / f"{stem}.safetensors")}
    labelled_grid(syn, target=SLIDE_PIXELS, max_margin=400).save(folder / f"{stem}.png")  # slide-sized, class names on the rows
    files["png"] = folder / f"{stem}.png"
    (folder / f"{stem}-imagefolder.zip").write_bytes(syn.imagefolder_zip())
    files["zip"] = folder / f"{stem}-imagefolder.zip"
    gif = evolution_gif(run, folder / f"{stem}-evolution.gif")
    if gif is not None:
        files["gif"] = gif
    run.files = files
    return files


def labelled_grid(syn, *, target: int = 480, max_margin: int = 160) -> Image.Image:
    """The set's grid (a row per class) enlarged to about `target` pixels, class names on the left
    in a margin as wide as the longest name (names wider than `max_margin` end in an ellipsis)."""
    from PIL import ImageDraw, ImageFont

    grid = syn.grid_image(upscale=1)
    scale = max(1, target // max(grid.size))
    grid = grid.resize((grid.size[0] * scale, grid.size[1] * scale), Image.NEAREST).convert("RGB")
    row = grid.size[1] / max(1, syn.num_classes)
    names: list[str] = []
    margin = 8
    if row >= 9:  # too many classes for readable names: no margin
        font = ImageFont.load_default(size=max(9, min(max(16, target // 40), int(row * 0.6))))
        names = [_fit(str(name), font, max_margin - 8) for name in syn.classes]
        margin = int(max(font.getlength(name) for name in names)) + 8
    out = Image.new("RGB", (grid.size[0] + margin, grid.size[1]), "white")
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    for k, name in enumerate(names):
        draw.text((margin - 4, int(k * row + row / 2)), name, fill=(40, 40, 40), font=font, anchor="rm")
    return out


def _fit(text: str, font, width: int) -> str:
    """`text`, cut and ended with an ellipsis if it is wider than `width` pixels in `font`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
