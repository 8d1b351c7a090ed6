"""Every image read goes through here: one guarded decoder that names the file when it fails.

`decode_image` turns file bytes into an array or raises BadImage (an empty file, bytes no codec reads, an
error inside OpenCV); `read_image` reads a file for the model (grayscale, or RGB); `read_bytes` gives
the raw bytes for hashing. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.data import DataError


class BadImage(DataError):
    """An image that cannot be read or decoded; the message names the file."""


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImage(f"{path}: image file not found") from None
    except OSError as e:
        raise BadImage(f"{path}: image file unreadable ({e.strerror or e})") from None


def decode_image(data: bytes, path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The decoded image of `data` (the bytes of `path`); BadImage naming the file when it cannot be."""
    if len(data) == 0:
        raise BadImage(f"{path}: empty image file (0 bytes)")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        raise BadImage(f"{path}: corrupt or unreadable image ({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise BadImage(f"{path}: corrupt or unreadable image")
    return img


def read_image(path: str | Path, in_chans: int) -> np.ndarray:
    """HxW (grayscale) or HxWx3 RGB uint8; raises BadImage with the path when it cannot be decoded."""
    img = decode_image(read_bytes(path), path, cv2.IMREAD_GRAYSCALE if in_chans == 1 else cv2.IMREAD_COLOR)
    return img if in_chans == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
