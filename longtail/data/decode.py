"""Decoding image files to RGB arrays at a given shorter side, with the fastest decoder present.

JPEGs are decoded with libjpeg-turbo's DCT-domain scaling (1/2, 1/4, 1/8) to the smallest scale
whose shorter side is still >= the target, then resized (Pillow's antialiased bilinear) so that
the shorter side is exactly the target and the aspect ratio is kept. Nothing is cropped: the
training crop is drawn later over the whole image. ``longtail bench data`` measures the decoders;
``auto`` takes the first of :data:`PREFERENCE` that imports.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

#: Fastest first, as measured by ``longtail bench data`` (results/bench-data-cpu.json).
PREFERENCE = ("simplejpeg", "turbojpeg", "pillow")
JPEG_MAGIC = b"\xff\xd8"


def _to_rgb(im) -> np.ndarray:
    """Any Pillow mode as uint8 RGB: 16-bit and 32-bit greys are scaled, not clipped; alpha is dropped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def target_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``'s output ``(h, w)`` for an ``h x w`` image: shorter side ``size``, longer truncated."""
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def shorter_side_to(a: np.ndarray, size: int, original: tuple[int, int] | None = None) -> np.ndarray:
    """``a`` resized (antialiased bilinear) to torchvision ``Resize(size)``'s size for the ``original`` ``(h, w)``
    (``a``'s own by default): a DCT-scaled decode then gets the same size as a full one."""
    from PIL import Image

    th, tw = target_size(*(original or a.shape[:2]), size)
    if a.shape[:2] == (th, tw):
        return a
    return np.asarray(Image.fromarray(a).resize((tw, th), Image.Resampling.BILINEAR))


def _pillow(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        original = im.size[::-1]
        if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
            im.draft("RGB", (size, size))  # DCT scaling: both sides stay >= size
        im.load()
        return _to_rgb(im), original


@functools.lru_cache(maxsize=None)
def _turbo():
    from turbojpeg import TurboJPEG

    return TurboJPEG()


#: The DCT scales used, as Pillow's ``draft`` uses them: libjpeg-turbo also offers n/8 (and n/16), but
#: sticking to these makes every decoder produce the same pixels, up to IDCT rounding.
DCT_SCALES = ((1, 1), (1, 2), (1, 4), (1, 8))


def _dct_factor(h: int, w: int, size: int) -> tuple[int, int]:
    """The smallest of :data:`DCT_SCALES` that keeps the shorter side >= ``size``."""
    ok = [f for f in DCT_SCALES if min(h, w) * f[0] / f[1] >= size]
    return min(ok, key=lambda f: f[0] / f[1]) if ok else (1, 1)


def _simplejpeg(data: bytes, size: int) -> np.ndarray:
    import simplejpeg

    if not data.startswith(JPEG_MAGIC):
        return _pillow(data, size)
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace not in ("Gray", "YCbCr", "RGB"):  # CMYK and YCCK go through Pillow
        return _pillow(data, size)
    num, den = _dct_factor(h, w, size)  # simplejpeg takes the smallest n/8 scale that keeps these sides
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h * num // den), min_width=-(-w * num // den)), (h, w)


def _turbojpeg(data: bytes, size: int) -> np.ndarray:
    from turbojpeg import TJPF_RGB

    if not data.startswith(JPEG_MAGIC):
        return _pillow(data, size)
    jpeg = _turbo()
    w, h, _, colorspace = jpeg.decode_header(data)
    if colorspace in (3, 4):  # TJCS_CMYK, TJCS_YCCK
        return _pillow(data, size)
    factor = _dct_factor(h, w, size)
    return jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=factor), (h, w)


DECODERS = {"pillow": _pillow, "simplejpeg": _simplejpeg, "turbojpeg": _turbojpeg}


def decoder_available(name: str) -> bool:
    try:
        if name == "simplejpeg":
            import simplejpeg  # noqa: F401
        elif name == "turbojpeg":
            _turbo()
        else:
            import PIL  # noqa: F401
        return True
    except Exception:  # ImportError, or PyTurboJPEG without the libturbojpeg library
        return False


@functools.lru_cache(maxsize=None)
def pick_decoder(name: str = "auto") -> str:
    if name == "auto":
        return next(n for n in PREFERENCE if decoder_available(n))
    if name not in DECODERS:
        raise ConfigError(f"data.decoder: unknown decoder {name!r}; choose from auto, {', '.join(DECODERS)}")
    if not decoder_available(name):
        raise ConfigError(f"data.decoder: {name} is not installed here; use auto or pillow")
    return name


#: EXIF orientation -> the array op that shows the image upright (Pillow's ``ImageOps.exif_transpose``).
ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 = upright) of an encoded image; 1 where it has none or it cannot be read."""
    from PIL import Image

    head = data[:1 << 16]  # JPEG APP1, PNG eXIf and WebP EXIF come before the pixels
    if b"Exif" not in head and b"eXIf" not in head and b"EXIF" not in head:
        return 1  # most files: no EXIF, no header parse
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112, 1)
        return value if value in ORIENT else 1
    except Exception:
        return 1


def decode_bytes(data: bytes, size: int, decoder: str = "auto", where: str = "image", orient: bool = True) -> np.ndarray:
    """uint8 ``(H, W, 3)`` with shorter side ``size``, upright by its EXIF orientation (phone photos; the
    papers' loaders ignore the tag, which ImageNet images almost never carry); a bad file is a DataError
    naming ``where``."""
    try:
        a, original = DECODERS[pick_decoder(decoder)](data, size)
        orientation = exif_orientation(data) if orient else 1
        if orientation != 1:
            a = np.ascontiguousarray(ORIENT[orientation](a))
            original = original[::-1] if orientation >= 5 else original
    except (ConfigError, DataError):
        raise
    except Exception as e:  # the decoders raise OSError, ValueError, SyntaxError... for bad files
        raise DataError(f"image {where} cannot be decoded ({type(e).__name__}: {e})") from None
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise DataError(f"image {where} is empty ({a.shape[1]}x{a.shape[0]})")
    return shorter_side_to(np.ascontiguousarray(a[..., :3]), size, original)


def decode_image(path: Path, size: int, decoder: str = "auto") -> np.ndarray:
    """uint8 ``(H, W, 3)``: the file at ``path``, RGB, shorter side resized to ``size``, aspect kept."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except OSError as e:
        raise DataError(f"image {path} cannot be read ({e.strerror or e})") from None
    return decode_bytes(data, size, decoder, str(path))


def probe_image(h: int = 375, w: int = 500) -> np.ndarray:
    """A cache-sized photo-like test image: odd sides (partial MCUs), colour gradients and a fine texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([xx / w * 255, yy / h * 255, 127 + 100 * np.sin(xx / 3.0) * np.cos(yy / 5.0)], axis=2)
    return np.clip(a, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def gpu_decoder_available(device: str) -> bool:
    """Whether torchvision's nvJPEG decoding works on ``device`` here: tried once on a batch of two cache-sized
    4:2:0 JPEGs of different, odd sizes, each within 3 grey levels (mean) of the CPU's decode of the same bytes."""
    if not device.startswith("cuda"):
        return False
    try:
        images = [probe_image(), probe_image(257, 341)]
        blobs = [encode_jpeg(a, 85) for a in images]
        for got, a, blob in zip(decode_jpegs_gpu(blobs, device), images, blobs):
            want = decode_bytes(blob, min(a.shape[:2])).astype(np.float32)
            got = got.permute(1, 2, 0).cpu().numpy().astype(np.float32)
            if got.shape != want.shape or np.abs(got - want).mean() >= 3.0:
                return False
        return True
    except Exception:  # no torchvision, a CPU-only build, no GPU, or no nvJPEG
        return False


def decode_jpegs_gpu(blobs: list[bytes], device) -> list:
    """uint8 ``(3, H, W)`` tensors on ``device``: a batch of baseline RGB JPEGs (the cache's) decoded by nvJPEG."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def encode_jpeg(a: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 RGB array (4:2:0, as camera JPEGs are)."""
    try:
        import simplejpeg

        return simplejpeg.encode_jpeg(a, quality=quality, colorspace="RGB", colorsubsampling="420")
    except ImportError:
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(a).save(out, format="JPEG", quality=quality, subsampling=2)
        return out.getvalue()
