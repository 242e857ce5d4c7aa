"""What a selecting method (RDED) is choosing at this step: the candidate crops of one class, each
framed green if it made it into the class's pool and grey if not, above the pool itself (best
first). A plain function from the method's `selection()` dict to a PIL image."""
from __future__ import annotations

import torch
from PIL import Image, ImageDraw

CELL = 40  # pixels per crop on screen (8x8 digits are scaled up 5x)
PAD = 4
KEPT, DROPPED, POOL = (46, 160, 67), (170, 170, 170), (60, 90, 200)
MAX_SHOWN = 48  # candidates shown; the rest are summarised in the caption


def _tiles(x: torch.Tensor, mean, std) -> list[Image.Image]:
    """(n, c, h, w) normalized crops -> PIL tiles of CELL x CELL, nearest-neighbour."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    pixels = ((x.float() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    out = []
    for p in pixels:
        arr = p.permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
        out.append(img.convert("RGB").resize((CELL, CELL), Image.NEAREST))
    return out


def selection_image(selection: dict, mean, std, class_name: str = "") -> Image.Image:
    """Candidates (framed by kept / not kept, ordered best first) in rows of 12, then the pool."""
    order = selection["scores"].argsort()[:MAX_SHOWN]
    cands = _tiles(selection["candidates"][order], mean, std)
    kept = selection["chosen"][order].tolist()
    pool = _tiles(selection["pool"][:MAX_SHOWN], mean, std)
    per_row = 12
    rows_c = (len(cands) + per_row - 1) // per_row
    rows_p = (len(pool) + per_row - 1) // per_row
    step = CELL + 2 * PAD
    header = 18
    width = per_row * step + PAD
    height = 2 * header + (rows_c + rows_p) * step + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    n_kept = int(selection["chosen"].sum())
    draw.text((PAD, 3), f"class {class_name or selection['class']}: {len(selection['scores'])} candidates "
                        f"(each image's best crop, most confident first), {n_kept} kept", fill=(0, 0, 0))

    def place(tiles, colours, top):
        for i, (tile, colour) in enumerate(zip(tiles, colours)):
            x, y = PAD + (i % per_row) * step, top + (i // per_row) * step
            draw.rectangle([x, y, x + CELL + 2 * PAD - 2, y + CELL + 2 * PAD - 2], outline=colour, width=PAD - 1)
            canvas.paste(tile, (x + PAD - 1, y + PAD - 1))

    place(cands, [KEPT if k else DROPPED for k in kept], header)
    top = header + rows_c * step
    draw.text((PAD, top + 3), f"the class's pool of kept crops, best first ({len(selection['pool'])})", fill=(0, 0, 0))
    place(pool, [POOL] * len(pool), top + header)
    return canvas
