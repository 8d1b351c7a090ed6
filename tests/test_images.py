"""Images as Kaggle ships them: every format, depth, alpha, palette, orientation and DICOM flavour read_image
promises, the errors that name the file, and reading reduced to `short_side` (cached and uncached alike)."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.images import BadImage, DicomUnavailable, decode_image, read_image, reduce_short_side
from pipeline.nn.loader import ImageCache, ImageDataset, estimate_bytes, maybe_cache

RNG = np.random.default_rng(0)


def rgb_image(h=12, w=20) -> np.ndarray:
    """A random RGB uint8 image (so that a channel swap or a flip changes pixels)."""
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_cv2(path, rgb_or_gray: np.ndarray, params=()) -> str:
    img = rgb_or_gray[:, :, ::-1] if rgb_or_gray.ndim == 3 and rgb_or_gray.shape[2] == 3 else rgb_or_gray
    assert cv2.imwrite(str(path), np.ascontiguousarray(img), list(params))
    return str(path)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, computed here independently of OpenCV."""
    return np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)


# --- formats ----------------------------------------------------------------------------------------------

LOSSLESS = {".png": (), ".bmp": (), ".tif": (), ".tiff": (), ".webp": (cv2.IMWRITE_WEBP_QUALITY, 101)}


@pytest.mark.parametrize("ext", [".jpg", *LOSSLESS])
def test_each_format_reads_as_rgb_and_gray(tmp_path, ext):
    rgb = cv2.resize(rgb_image(6, 10), (40, 24), interpolation=cv2.INTER_LINEAR)  # smooth, so JPEG stays close
    path = write_cv2(tmp_path / f"x{ext}", rgb, LOSSLESS.get(ext, (cv2.IMWRITE_JPEG_QUALITY, 98)))
    got, gray = read_image(path, 3), read_image(path, 1)
    assert got.shape == (24, 40, 3) and got.dtype == np.uint8 and gray.shape == (24, 40) and gray.dtype == np.uint8
    if ext == ".jpg":
        error = np.abs(got.astype(int) - rgb).mean()  # lossy (chroma subsampling), but in RGB order:
        assert error < 10 and np.abs(got[:, :, ::-1].astype(int) - rgb).mean() > 3 * error  # BGR would be far
        assert np.abs(gray.astype(int) - luminance(rgb)).mean() < 3
    else:
        assert np.array_equal(got, rgb)
        assert np.abs(gray.astype(int) - luminance(rgb)).max() <= 1


# --- 16 bits ----------------------------------------------------------------------------------------------

VALUES16 = np.array([[0, 128, 129, 257 * 3 + 128, 257 * 3 + 129, 40000, 65535]], dtype=np.uint16)
EXPECTED8 = np.array([[0, 0, 1, 3, 4, 156, 255]], dtype=np.uint8)  # round(v / 257); truncation (v >> 8) differs


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_gray_scales_over_the_full_range(tmp_path, ext):
    path = write_cv2(tmp_path / f"g16{ext}", VALUES16)
    assert np.array_equal(read_image(path, 1), EXPECTED8)
    assert np.array_equal(read_image(path, 3), np.dstack([EXPECTED8] * 3))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_scales_each_channel_in_rgb_order(tmp_path, ext):
    rgb16 = np.dstack([VALUES16, VALUES16[:, ::-1], np.full_like(VALUES16, 65535)])
    path = write_cv2(tmp_path / f"c16{ext}", rgb16)
    assert np.array_equal(read_image(path, 3), np.dstack([EXPECTED8, EXPECTED8[:, ::-1], np.full_like(EXPECTED8, 255)]))


# --- alpha, palette ---------------------------------------------------------------------------------------


def test_rgba_png_is_composited_over_black(tmp_path):
    rgb = np.full((2, 3, 3), (200, 100, 50), dtype=np.uint8)
    alpha = np.array([[0, 128, 255], [255, 255, 0]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), np.dstack([rgb[:, :, ::-1], alpha]))
    got = read_image(path, 3)
    expected = np.rint(rgb * (alpha[:, :, None] / 255.0)).astype(np.uint8)
    assert np.array_equal(got, expected)
    assert np.array_equal(got[0, 0], [0, 0, 0]) and np.array_equal(got[0, 1], [100, 50, 25])  # 200*128/255 = 100.4


def test_16bit_rgba_png_is_composited_then_scaled(tmp_path):
    path = tmp_path / "rgba16.png"
    bgra = np.array([[[65535, 65535, 65535, 0], [65535, 65535, 65535, 32768], [25700, 0, 65535, 65535]]],
                    dtype=np.uint16)
    assert cv2.imwrite(str(path), bgra)
    assert np.array_equal(read_image(path, 3), [[[0, 0, 0], [128, 128, 128], [255, 0, 100]]])


def test_gray_alpha_png_is_composited_over_black(tmp_path):
    from PIL import Image

    gray = np.array([[100, 100, 250]], dtype=np.uint8)
    alpha = np.array([[0, 255, 51]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
    assert np.array_equal(read_image(path, 1), [[0, 100, 50]])
    assert np.array_equal(read_image(path, 3), np.dstack([[[0, 100, 50]]] * 3))


def test_palette_png_gives_its_colours_and_transparent_entries_black(tmp_path):
    from PIL import Image

    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "p_trns.png", transparency=1)
    assert np.array_equal(read_image(tmp_path / "p.png", 3), [[[255, 0, 0], [0, 255, 0], [10, 20, 30]]])
    assert np.array_equal(read_image(tmp_path / "p_trns.png", 3), [[[255, 0, 0], [0, 0, 0], [10, 20, 30]]])
    assert np.array_equal(read_image(tmp_path / "p.png", 1), [[76, 150, 18]])  # luminance of each colour


# --- gray <-> RGB -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_gray_file_in_an_rgb_competition_is_replicated(tmp_path, ext):
    gray = cv2.resize(RNG.integers(0, 256, (4, 5), dtype=np.uint8), (20, 16))
    path = write_cv2(tmp_path / f"g{ext}", gray)
    got = read_image(path, 3)
    assert got.shape == (16, 20, 3)
    assert np.array_equal(got[:, :, 0], got[:, :, 1]) and np.array_equal(got[:, :, 0], got[:, :, 2])
    assert np.array_equal(got[:, :, 0], read_image(path, 1))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_rgb_file_in_a_gray_competition_is_luminance(tmp_path, ext):
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 150, 100]]], dtype=np.uint8)
    rgb = np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1)  # flat 16x16 blocks: JPEG keeps them close
    path = write_cv2(tmp_path / f"c{ext}", rgb, (cv2.IMWRITE_JPEG_QUALITY, 100) if ext == ".jpg" else ())
    got = read_image(path, 1)
    assert got.shape == (16, 64)
    centres = got[8, 8::16].astype(int)
    assert np.abs(centres - luminance(colours)[0]).max() <= (0 if ext == ".png" else 3), centres  # 76, 150, 29, 159


# --- EXIF orientation -------------------------------------------------------------------------------------


def test_jpeg_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[:, :8] = (255, 0, 0)  # the left quarter red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to show, so the left edge becomes the top
    path = tmp_path / "rot.jpg"
    Image.fromarray(rgb).save(path, "JPEG", quality=100, exif=exif.tobytes())
    got = read_image(path, 3)
    assert got.shape == (32, 16, 3)
    assert got[:6, :, 0].min() > 200 and got[:6, :, 1].max() < 60  # red on top
    assert got[-12:].max() < 60  # black below
    assert read_image(path, 1).shape == (32, 16)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_formats_matches_pillow(tmp_path, fmt):
    from PIL import Image, ImageOps

    rgb = rgb_image(5, 7)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        Image.fromarray(rgb).save(path, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert np.array_equal(read_image(path, 3), expected), orientation
        assert expected.shape[:2] == ((7, 5) if orientation >= 5 else (5, 7))


# --- DICOM ------------------------------------------------------------------------------------------------


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", frames: int = 1, preamble: bool = True,
                **tags) -> str:
    """A minimal uncompressed DICOM file of `pixels` ((frames,) rows, cols(, 3)), written by pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    colour = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if colour else 1), photometric
    if colour:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    if not preamble:  # a bare dataset: no 128-byte preamble, no DICM magic
        data = path.read_bytes()
        path.write_bytes(data[132:])
    return str(path)


STORED = np.array([[0, 50, 75, 100, 150, 200]], dtype=np.int16)
# HU = 2 * stored - 100; window centre 100, width 201: (HU - (100 - 0.5 - 100)) / 200, clipped, x 255
WINDOWED = np.array([[0, 1, 64, 128, 255, 255]], dtype=np.uint8)


@pytest.mark.parametrize("multi_valued", [False, True])
def test_dicom_applies_rescale_then_window(tmp_path, multi_valued):
    pytest.importorskip("pydicom")
    window = {"WindowCenter": [100, 40], "WindowWidth": [201, 80]} if multi_valued else \
        {"WindowCenter": 100, "WindowWidth": 201}
    path = write_dicom(tmp_path / "ct.dcm", STORED, RescaleSlope=2, RescaleIntercept=-100, **window)
    assert np.array_equal(read_image(path, 1), WINDOWED)  # without the rescale: 64, 96, 128, 191, 255
    assert np.array_equal(read_image(path, 3), np.dstack([WINDOWED] * 3))


def test_dicom_monochrome1_is_inverted(tmp_path):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "cr.dcm", STORED, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100,
                       WindowCenter=100, WindowWidth=201)
    assert np.array_equal(read_image(path, 1), 255 - WINDOWED)


def test_dicom_without_window_uses_min_max(tmp_path):
    pytest.importorskip("pydicom")
    path = write_dicom(tmp_path / "mr.dcm", np.array([[-1000, -200, 1000]], dtype=np.int16))
    assert np.array_equal(read_image(path, 1), [[0, 102, 255]])  # (-200 + 1000) / 2000 * 255 = 102


def test_dicom_multiframe_gives_the_first_frame(tmp_path):
    pytest.importorskip("pydicom")
    frames = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    # centre 128, width 256 on 8-bit pixels is the identity: (v - 0) / 255 x 255
    path = write_dicom(tmp_path / "cine.dcm", frames, frames=3, WindowCenter=128, WindowWidth=256)
    assert np.array_equal(read_image(path, 1), frames[0])


def test_dicom_rgb_stays_rgb(tmp_path):
    pytest.importorskip("pydicom")
    rgb = rgb_image(4, 6)
    path = write_dicom(tmp_path / "photo.dcm", rgb, "RGB")
    assert np.array_equal(read_image(path, 3), rgb)
    assert np.abs(read_image(path, 1).astype(int) - luminance(rgb)).max() <= 1


def test_dicom_is_recognised_by_magic_or_suffix(tmp_path):
    pytest.importorskip("pydicom")
    no_suffix = write_dicom(tmp_path / "scan", STORED, RescaleSlope=2, RescaleIntercept=-100,
                            WindowCenter=100, WindowWidth=201)  # DICM at byte 128
    bare = write_dicom(tmp_path / "bare.dcm", STORED, preamble=False, RescaleSlope=2, RescaleIntercept=-100,
                       WindowCenter=100, WindowWidth=201)  # .dcm without preamble
    for path in (no_suffix, bare):
        assert np.array_equal(read_image(path, 1), WINDOWED)
    with open(no_suffix, "rb") as f:
        assert np.array_equal(decode_image(f.read(), no_suffix), WINDOWED)  # the folds/EDA scan decodes it too


def test_dicom_pydicom_cannot_decode_names_file_and_transfer_syntax(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    path = tmp_path / "ls.dcm"
    write_dicom(path, np.zeros((4, 4), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS stream"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    with pytest.raises(BadImage, match="JPEG-LS") as err:
        read_image(path, 1)
    assert str(path) in str(err.value) and "1.2.840.10008.1.2.4.80" in str(err.value)


def test_dicom_without_pydicom_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "scan.bin"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(DicomUnavailable) as err:
        read_image(path, 1)
    message = str(err.value)
    assert str(path) in message and "pip install -e '.[dicom]'" in message and "make install" in message
    assert not isinstance(err.value, BadImage)  # a skip policy must not swallow every DICOM of a competition
    ds = ImageDataset([path], None, lambda image: {"image": image}, 1, "skip")
    with pytest.raises(DicomUnavailable):
        ds[0]


# --- what fails -------------------------------------------------------------------------------------------


def test_broken_files_are_bad_images_naming_the_file(tmp_path):
    good = write_cv2(tmp_path / "good.png", rgb_image())
    cases = {
        "empty.png": b"",
        "garbage.jpg": b"this is not an image at all" * 10,
        "truncated.png": open(good, "rb").read()[:40],
        "garbage.dcm": b"not a dicom file" * 20,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "missing.png"]:
        with pytest.raises(BadImage) as err:
            read_image(tmp_path / name, 3)
        assert str(tmp_path / name) in str(err.value), name
    with pytest.raises(BadImage, match="empty image file"):
        read_image(tmp_path / "empty.png", 1)


def test_float_tiff_is_refused_by_name(tmp_path):
    path = write_cv2(tmp_path / "f.tif", np.ones((3, 3), np.float32))
    with pytest.raises(BadImage, match="float32 pixels are not supported"):
        read_image(path, 1)


# --- short_side -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, short_side, expected", [
    ((300, 500), 100, (100, 167)),     # landscape: height is the short side
    ((500, 300), 100, (167, 100)),     # portrait
    ((300, 500), 300, (300, 500)),     # equal: unchanged
    ((300, 500), 1000, (300, 500)),    # never enlarged
    ((300, 500), None, (300, 500)),    # no reduction asked
])
def test_short_side_reduces_keeping_aspect(tmp_path, shape, short_side, expected):
    rgb = cv2.resize(rgb_image(7, 9), shape[::-1])
    path = write_cv2(tmp_path / "x.png", rgb)
    got = read_image(path, 3, short_side=short_side)
    assert got.shape == (*expected, 3)
    full = read_image(path, 3)
    want = full if expected == shape else cv2.resize(full, expected[::-1], interpolation=cv2.INTER_AREA)
    assert np.array_equal(got, want)
    assert read_image(path, 1, short_side=short_side).shape == expected


def test_short_side_must_be_positive():
    with pytest.raises(ValueError, match="short_side"):
        reduce_short_side(np.zeros((4, 4), np.uint8), 0)


# --- the RAM cache reads reduced images -------------------------------------------------------------------

BIG = [(3000, 4000), (4000, 3000), (3000, 4000)]  # (h, w): landscape and portrait camera frames


@pytest.fixture(scope="module")
def big_jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate(BIG):
        small = rng.integers(0, 256, (h // 100, w // 100, 3), dtype=np.uint8)
        paths.append(write_cv2(folder / f"{i}.jpg", cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR),
                               (cv2.IMWRITE_JPEG_QUALITY, 90)))
    return paths


def test_cache_of_reduced_images_holds_a_fraction_and_matches_disk(big_jpegs):
    short = 576
    full_bytes = sum(h * w * 3 for h, w in BIG)
    cache = ImageCache(big_jpegs, 3, threads=2, short_side=short)
    expected_bytes = sum(short * round(max(h, w) * short / min(h, w)) * 3 for h, w in BIG)
    assert cache.nbytes == expected_bytes
    assert cache.nbytes / full_bytes == pytest.approx((short / 3000) ** 2, rel=0.01)
    assert estimate_bytes(big_jpegs, 3, short_side=short) == expected_bytes
    identity = lambda image: {"image": torch.from_numpy(np.ascontiguousarray(image))}  # noqa: E731
    cached = ImageDataset(big_jpegs, None, identity, 3, "fail", cache, short_side=short)
    uncached = ImageDataset(big_jpegs, None, identity, 3, "fail", short_side=short)
    for i, (h, w) in enumerate(BIG):
        img = cache[i]
        assert img.shape == ((short, 768, 3) if h < w else (768, short, 3))
        assert torch.equal(cached[i][0], uncached[i][0])
        assert np.array_equal(img, read_image(big_jpegs[i], 3, short_side=short))
    with pytest.raises(ValueError, match="short_side"):  # a cache filled at another size is refused
        ImageDataset(big_jpegs, None, identity, 3, "fail", cache)


def test_maybe_cache_passes_short_side_through(big_jpegs):
    cache = maybe_cache(True, big_jpegs[:1], 1, "fail", "big", verbose=False, short_side=300)
    assert cache is not None and cache.short_side == 300 and cache[0].shape == (300, 400)
    train, val = cache.split(1)
    assert train.short_side == val.short_side == 300


# --- images at real size: a pixel limit read from the header, reduced JPEG decoding ----------------------


def bomb_png(path, side: int = 30000) -> None:
    """A PNG of under a megabyte that declares side x side 8-bit gray pixels (~side^2 bytes decoded)."""
    import struct
    import zlib

    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
        "print(p.stderr, file=sys.stderr)")


@pytest.mark.parametrize("stage", ["check", "folds"])
def test_a_decompression_bomb_is_refused_by_name_before_decoding(tmp_path, stage):
    import subprocess

    import pandas as pd

    from tests.conftest import make_competition

    make_competition(tmp_path, n_train=30, n_test=6)
    victim = pd.read_csv(tmp_path / "data/tiny/train.csv", dtype=str)["image_id"][4]
    bomb_png(tmp_path / "data/tiny/train" / f"{victim}.png")
    assert (tmp_path / "data/tiny/train" / f"{victim}.png").stat().st_size < 1_000_000
    proc = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "pipeline", stage, "-c",
                           "competition.yaml"], cwd=tmp_path, capture_output=True, text=True)
    rc, peak_mb = map(int, proc.stdout.split())
    assert rc == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{victim}.png: declares 30000x30000 = 900,000,000 pixels, over the limit of 89,478,485" in proc.stderr
    assert "max_image_pixels" in proc.stderr
    assert peak_mb <= 700, f"{stage} peaked at {peak_mb} MB"


def test_the_pixel_limit_is_a_competition_key(tmp_path):
    from tests.conftest import make_competition, run_cli

    make_competition(tmp_path, n_train=30, n_test=6, max_image_pixels=50)  # 8x8 = 64 pixels > 50
    proc = run_cli("check", "-c", "competition.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "declares 8x8 = 64 pixels, over the limit of 50" in proc.stdout + proc.stderr
    assert run_cli("check", "-c", "competition.yaml", "--comp-args", "max_image_pixels=null", cwd=tmp_path).returncode == 0


def test_a_large_jpeg_is_decoded_reduced_to_the_short_side(tmp_path):
    from pipeline.core.images import jpeg_reduction

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    big = cv2.resize(small, (2000, 1500), interpolation=cv2.INTER_CUBIC)  # smooth, like a photo
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert jpeg_reduction((2000, 1500), 200) == 4 and jpeg_reduction((2000, 1500), 1500) == 1
    assert jpeg_reduction((2000, 1500), 100) == 8 and jpeg_reduction(None, 100) == 1
    assert jpeg_reduction((40, 30), 64) == 1  # smaller than asked: read whole, never enlarged
    reduced = read_image(path, 3, short_side=200)
    assert reduced.shape == (200, 267, 3)
    full = reduce_short_side(read_image(path, 3), 200)  # decoded whole, then reduced
    assert full.shape == reduced.shape
    assert np.abs(full.astype(int) - reduced.astype(int)).mean() < 3  # the same picture
    assert read_image(path, 1, short_side=200).shape == (200, 267)
