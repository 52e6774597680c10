"""What a written figure must show: more than a blank canvas (an empty axes or a white page passes a size check)."""
from pathlib import Path

import numpy as np
from PIL import Image


def assert_drawn(png: Path, min_coloured: float = 0.002) -> None:
    """``png`` is a real image with data drawn on it. Every figure here plots its data in colour and its axes,
    ticks and text in grey, so an empty axes has no coloured pixel (measured: 0 of 240,000) while the committed
    reports' figures have 1.2-33 % of them; ``min_coloured`` is the share a figure needs."""
    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB")).astype(np.int16).reshape(-1, 3)
    coloured = float(((a.max(1) - a.min(1)) > 40).mean())
    assert coloured >= min_coloured, f"{png}: {coloured:.3%} of its pixels in colour: nothing is plotted"
