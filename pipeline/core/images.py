"""Every image read goes through here: one guarded decoder that names the file when it fails.

What `read_image` reads, always giving HxW uint8 (in_chans 1) or HxWx3 RGB uint8 (in_chans 3):

- JPEG, PNG, WebP, BMP and TIFF, through OpenCV; EXIF orientation is applied (JPEG, PNG, WebP, TIFF);
- 16-bit PNG and TIFF, grayscale or colour: scaled to 8 bits over the full 16-bit range (value / 257,
  rounded), not truncated;
- an alpha channel (RGBA, gray + alpha, a palette with transparency): composited over black, so
  transparent areas look like zero padding;
- palette images (expanded to their colours);
- a grayscale file in an RGB competition (replicated to 3 channels) and a colour file in a grayscale one
  (luminance, ITU-R BT.601);
- DICOM (a `.dcm` suffix, or `DICM` at byte 128), through pydicom, the optional `dicom` extra
  (`pip install -e '.[dicom]'`; `make install` installs it): see `decode_dicom`. The competition key
  `dicom_windows` (`set_dicom_windows`) maps a grayscale slice to one channel per (center, width) window.

`read_image(..., short_side=s)` shrinks an image whose shorter side is longer than s to exactly s
(cv2.INTER_AREA, aspect kept); it never enlarges. A JPEG at least twice that size is decoded reduced by
libjpeg itself (1/2, 1/4 or 1/8: `cv2.IMREAD_REDUCED_*`), so a 4,000 px photo is never decoded whole.

Nothing is decoded whose header declares more than the pixel limit (competition key
`max_image_pixels`, default Pillow's 89,478,485; `set_pixel_limit`): a small file that declares a huge
image (a decompression bomb) is a BadImage naming the file and its size, read from the header alone.

`decode_image` turns file bytes into an array in OpenCV's channel order or raises BadImage (an empty
file, bytes no codec reads, an error inside OpenCV or pydicom); `read_bytes` gives the raw bytes for
hashing; `decode_reduced` gives bytes already read as `read_image` decodes them (gray or BGR), for
hashing after the md5. Every failure is a BadImage naming the file, except a DICOM file without pydicom
installed (a DicomUnavailable) and three DICOM windows read by a one-channel model (a
DicomWindowsMismatch, a ConfigError): no bad-image policy should skip a whole competition's images.
Nothing here imports torch.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import ConfigError, DataError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (1024 x 1024 x 1024 // 4 // 3)
_pixel_limit: int | None = MAX_IMAGE_PIXELS
_dicom_windows: tuple[tuple[float, float], ...] | None = None
REDUCED = {2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
           4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
           8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8)}


class BadImage(DataError):
    """An image that cannot be read or decoded; the message names the file."""


class DicomUnavailable(DataError):
    """A DICOM file met without pydicom installed; the message names the file and the fix."""


class DicomWindowsMismatch(ConfigError):
    """Three DICOM windows (three channels) read by a one-channel model: two settings that contradict each
    other, not a bad image (it stops every stage at once); the message names both keys."""


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImage(f"{path}: image file not found") from None
    except OSError as e:
        raise BadImage(f"{path}: image file unreadable ({e.strerror or e})") from None


def set_pixel_limit(pixels: int | None) -> None:
    """The most pixels an image may declare before it is decoded (None: no limit); the competition sets it."""
    global _pixel_limit
    _pixel_limit = pixels


def set_dicom_windows(windows) -> None:
    """The (center, width) windows a grayscale DICOM maps to, one channel each (None: the file's own window);
    the competition sets them (key `dicom_windows`)."""
    global _dicom_windows
    _dicom_windows = None if not windows else tuple((float(c), float(w)) for c, w in windows)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, read without decoding the pixels (Pillow parses
    headers lazily); None for a format or header Pillow does not know (OpenCV then decides)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the limit is ours (check_pixels), with a message that names the file
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse: no size known, OpenCV decides
        return None


HEADER_BYTES = 1 << 18  # enough for any header Pillow reads (a JPEG's SOF after EXIF and a thumbnail)


def check_header(path: str | Path) -> str | None:
    """Why the image at `path` must not be decoded (over the pixel limit), from its first bytes alone."""
    try:
        with open(path, "rb") as f:
            check_pixels(f.read(HEADER_BYTES), path)
    except BadImage as e:
        return str(e)
    except OSError:
        return None  # missing or unreadable files are reported where they are read
    return None


def check_pixels(data: bytes, path: str | Path) -> tuple[int, int] | None:
    """The declared (width, height); BadImage naming the file when it is over the pixel limit."""
    size = declared_size(data)
    if size is not None and _pixel_limit is not None and size[0] * size[1] > _pixel_limit:
        w, h = size
        raise BadImage(f"{path}: declares {w}x{h} = {w * h:,} pixels, over the limit of {_pixel_limit:,} "
                       "(competition key max_image_pixels); nothing was decoded. "
                       "A file this small claiming that much is a decompression bomb; raise the limit if it is real")
    return size


def is_dicom(data: bytes, path: str | Path) -> bool:
    """A `.dcm` file, or one with the DICOM magic `DICM` after its 128-byte preamble."""
    return Path(path).suffix.lower() == ".dcm" or data[128:132] == b"DICM"


def decode_image(data: bytes, path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The decoded image of `data` (the bytes of `path`); BadImage naming the file when it cannot be.

    OpenCV decodes with `flags` (by default the stored depth and channels, alpha included, BGR order). A
    DICOM file ignores `flags` and gives `decode_dicom`'s 8-bit image (BGR when in colour).
    """
    if len(data) == 0:
        raise BadImage(f"{path}: empty image file (0 bytes)")
    if is_dicom(data, path):
        img = decode_dicom(data, path)
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    check_pixels(data, path)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        raise BadImage(f"{path}: corrupt or unreadable image ({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise BadImage(f"{path}: corrupt or unreadable image")
    return img


def read_image(path: str | Path, in_chans: int, short_side: int | None = None) -> np.ndarray:
    """HxW (in_chans 1) or HxWx3 RGB (in_chans 3) uint8 of any format the module docstring lists, its
    shorter side reduced to `short_side` when longer (never enlarged); BadImage naming the file when it
    cannot be decoded."""
    data = read_bytes(path)
    if in_chans == 1 and _dicom_windows is not None and len(_dicom_windows) == 3 and is_dicom(data, path):
        raise DicomWindowsMismatch(
            f"{path}: the competition key dicom_windows gives 3 windows, one per channel, but this model reads "
            "in_chans: 1. Set in_chans: 3 in the model config, or give dicom_windows a single window")
    return to_channels(decode_reduced(data, path, in_chans == 1, short_side), in_chans)


def decode_reduced(data: bytes, path: str | Path, gray: bool, short_side: int | None = None) -> np.ndarray:
    """Gray or BGR uint8 of the bytes `data` of `path`, as read_image reads them before matching the
    channels: a JPEG decoded reduced by libjpeg and in grayscale when `gray`, anything else whole and then
    reduced to `short_side`."""
    if data[:3] == JPEG_MAGIC and not is_dicom(data, path):
        # No alpha or 16 bits in a JPEG: let libjpeg give the channels asked for (luminance straight from
        # its Y plane for grayscale), reduced by 2, 4 or 8 while that keeps the short side; OpenCV applies
        # the EXIF orientation with these flags.
        factor = jpeg_reduction(check_pixels(data, path), short_side)
        flags = REDUCED[factor] if factor > 1 else (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR)
        img = decode_image(data, path, flags[0] if gray else flags[1])
    else:
        # IMREAD_UNCHANGED keeps 16 bits and alpha, but skips OpenCV's EXIF orientation for PNG and WebP
        # (its TIFF decoder orients by itself), so that is applied here.
        img = decode_image(data, path)
        if data[:8] == PNG_MAGIC or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            img = apply_orientation(img, exif_orientation(data))
        img = to_uint8(img, path)
    return reduce_short_side(img, short_side)


def jpeg_reduction(size: tuple[int, int] | None, short_side: int | None) -> int:
    """The largest of 1, 2, 4, 8 that keeps the declared shorter side at least `short_side`."""
    if size is None or short_side is None:
        return 1
    return max([1] + [f for f in (2, 4, 8) if min(size) // f >= short_side])


def to_uint8(img: np.ndarray, path: str | Path) -> np.ndarray:
    """Gray or BGR uint8 from OpenCV's unchanged decode: 16 bits scaled by 1/257 (rounded), alpha
    composited over black."""
    if img.dtype == np.uint8:
        maxv = 255
    elif img.dtype == np.uint16:
        maxv = 65535
    else:
        raise BadImage(f"{path}: {img.dtype} pixels are not supported (8- and 16-bit images are)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (2, 4):  # gray + alpha, BGRA
        out = composite_over_black(img[:, :, :-1], img[:, :, -1], maxv)
        return out[:, :, 0] if out.shape[2] == 1 else out
    if maxv == 255:
        return img
    return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(value / 257)


def composite_over_black(color: np.ndarray, alpha: np.ndarray, maxv: int) -> np.ndarray:
    """round(color * alpha / maxv * 255 / maxv) as uint8: the colour over black, at 8 bits, in integers."""
    wide = np.uint32 if maxv == 255 else np.uint64  # 255**3 fits in 32 bits, 65535**2 * 255 needs 64
    den = maxv * maxv
    num = color.astype(wide) * alpha.astype(wide)[:, :, None] * wide(255)
    return ((num + wide(den // 2)) // wide(den)).astype(np.uint8)


def to_channels(img: np.ndarray, in_chans: int) -> np.ndarray:
    """Gray or BGR uint8 -> HxW (in_chans 1: luminance of a colour image) or HxWx3 RGB (gray replicated)."""
    if in_chans == 1:
        return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)


def reduce_short_side(img: np.ndarray, short_side: int | None) -> np.ndarray:
    """`img` with its shorter side reduced to `short_side` (cv2.INTER_AREA, aspect kept); unchanged when
    short_side is None or the shorter side is not longer."""
    if short_side is None:
        return img
    if short_side < 1:
        raise ValueError(f"short_side must be a positive number of pixels, not {short_side}")
    h, w = img.shape[:2]
    if min(h, w) <= short_side:
        return img
    if h <= w:
        size = (max(1, round(w * short_side / h)), short_side)  # cv2 sizes are (width, height)
    else:
        size = (short_side, max(1, round(h * short_side / w)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


# --- EXIF orientation (PNG eXIf and WebP EXIF chunks; OpenCV orients JPEG and TIFF itself) ---------------


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation (1-8) of a PNG or WebP file; 1 when it has none or it cannot be read."""
    exif = _png_chunk(data, b"eXIf") if data[:8] == PNG_MAGIC else _webp_chunk(data, b"EXIF")
    if exif is None:
        return 1
    if exif[:6] == b"Exif\x00\x00":  # some writers keep the JPEG APP1 prefix
        exif = exif[6:]
    return _tiff_orientation(exif)


def _png_chunk(data: bytes, kind: bytes) -> bytes | None:
    pos = 8
    while pos + 8 <= len(data):
        length, name = struct.unpack_from(">I4s", data, pos)
        if name == kind:
            return data[pos + 8 : pos + 8 + length]
        if name == b"IEND":
            return None
        pos += 12 + length
    return None


def _webp_chunk(data: bytes, kind: bytes) -> bytes | None:
    pos = 12
    while pos + 8 <= len(data):
        name, length = struct.unpack_from("<4sI", data, pos)
        if name == kind:
            return data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)
    return None


def _tiff_orientation(exif: bytes) -> int:
    """Tag 0x0112 of IFD0 in a TIFF-structured EXIF block; 1 when absent or malformed."""
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if exif[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", exif, 4)
    if ifd + 2 > len(exif):
        return 1
    (count,) = struct.unpack_from(order + "H", exif, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(exif) - 11), 12):
        tag, kind = struct.unpack_from(order + "HH", exif, entry)
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack_from(order + "H", exif, entry + 8)
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """`img` turned upright for an EXIF orientation, as OpenCV does for the flags that apply it."""
    if orientation in (5, 6, 7, 8):
        img = img.swapaxes(0, 1)  # transpose
    axes = {2: 1, 3: (0, 1), 4: 0, 6: 1, 7: (0, 1), 8: 0}.get(orientation)  # cv2.flip codes 1, -1, 0
    if axes is not None:
        img = np.flip(img, axes)
    return np.ascontiguousarray(img)


# --- DICOM ------------------------------------------------------------------------------------------------


def decode_dicom(data: bytes, path: str | Path) -> np.ndarray:
    """HxW or HxWx3 RGB uint8 of a DICOM file, through pydicom (the optional `dicom` extra).

    Grayscale: RescaleSlope/RescaleIntercept are applied, then, when the competition sets `dicom_windows`
    (`set_dicom_windows`), each of its (center, width) windows gives one channel (`window_to_uint8`; 3
    windows: HxWx3, channel i = window i); else the file's linear VOI window (WindowCenter and
    WindowWidth, the first value of each when multi-valued; DICOM PS3.3 C.11.2.1.2.1) maps to 0..255, or,
    when the file has no window, the pixels' own min..max does; MONOCHROME1 is inverted so that higher is
    brighter. Colour (RGB, YBR as pydicom converts it to RGB, PALETTE COLOR through its lookup table)
    stays RGB, scaled to 8 bits when stored deeper. A multi-frame file gives its FIRST frame only.
    Modality and VOI lookup-table sequences and sigmoid windows are not applied.
    """
    try:
        import pydicom
    except ImportError:
        raise DicomUnavailable(f"{path}: reading DICOM images needs pydicom, which is not installed; run "
                               "`pip install -e '.[dicom]'` (or `make install`, which installs the dicom extra)"
                               ) from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except Exception as e:  # a parser of arbitrary bytes may raise anything; name the file
        raise BadImage(f"{path}: not a readable DICOM file ({_why(e)})") from None
    if "PixelData" not in ds:
        raise BadImage(f"{path}: DICOM file holds no pixel data")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntax_name = f"{getattr(syntax, 'name', syntax)} ({syntax})" if syntax else "unknown"
    try:
        if hasattr(ds, "pixel_array_options"):  # pydicom >= 3: decode the first frame only
            ds.pixel_array_options(index=0)
            pixels = ds.pixel_array
        else:
            pixels = ds.pixel_array
            if int(ds.get("NumberOfFrames") or 1) > 1:
                pixels = pixels[0]
    except Exception as e:  # a codec plugin may raise anything; name the file and the syntax
        raise BadImage(f"{path}: DICOM pixel data with transfer syntax {syntax_name} cannot be decoded "
                       f"({_why(e)})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored") or 8)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    if pixels.ndim == 3:
        return _colour_to_uint8(pixels, bits)
    if pixels.ndim != 2:
        raise BadImage(f"{path}: DICOM pixel data of shape {pixels.shape} is not an image")
    return _gray_to_uint8(pixels, ds, photometric == "MONOCHROME1")


def _why(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _first(value) -> float | None:
    """A DICOM number, or the first of a multi-valued one (pydicom's MultiValue); None when absent or empty."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)


def _gray_to_uint8(pixels: np.ndarray, ds, monochrome1: bool) -> np.ndarray:
    """Rescale (slope, intercept), then the competition's windows (one channel each: HxW or HxWx3), else
    the file's linear window or the min..max, to 0..255; MONOCHROME1 inverted."""
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    x = pixels.astype(np.float32) * np.float32(1.0 if slope is None else slope) + np.float32(intercept or 0.0)
    if _dicom_windows is not None:
        out = np.dstack([window_to_uint8(x, c, w) for c, w in _dicom_windows])
        out = out[:, :, 0] if out.shape[2] == 1 else out
        return 255 - out if monochrome1 else out
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        low, span = center - 0.5 - (width - 1) / 2, max(width - 1, 1e-6)
    else:
        low, span = float(x.min()), float(x.max() - x.min())
    scaled = np.clip((x - low) / span, 0, 1) * 255 if span > 0 else np.zeros_like(x)
    out = np.rint(scaled).astype(np.uint8)
    return 255 - out if monochrome1 else out


def window_to_uint8(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """The window (center, width) of rescaled values to uint8: (x - (center - width / 2)) / width, clipped
    to 0..1, times 255, rounded (the RSNA haemorrhage recipe: brain 40/80, subdural 80/200, bone 600/2800)."""
    low = np.float32(center - width / 2)
    return np.rint(np.clip((x - low) / np.float32(width), 0, 1) * 255).astype(np.uint8)


def _colour_to_uint8(pixels: np.ndarray, bits: int) -> np.ndarray:
    """RGB samples of `bits` bits -> uint8 (value * 255 / (2**bits - 1), rounded)."""
    if pixels.dtype == np.uint8 or bits <= 8:
        return np.ascontiguousarray(pixels.astype(np.uint8, copy=False))
    maxv = 2**bits - 1
    return np.rint(np.clip(pixels, 0, maxv).astype(np.float64) * (255 / maxv)).astype(np.uint8)
