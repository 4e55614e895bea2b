"""Reading radiographs of any format into one convention, through MONAI image readers.

Every image, whatever its format, comes out as a 2D ``float32`` array of shape
``(rows, columns)`` (as displayed; not MONAI's ``(x, y)`` order) with values in
``[0, 1]`` where dense tissue (bone) is bright:

* PNG, JPEG, BMP, TIFF through :class:`monai.data.PILReader`: modes ``L``,
  ``RGB``, ``RGBA``, ``P`` (palette), ``LA``, ``1``, ``CMYK`` become grey
  (ITU-R 601 luma; alpha dropped); 8-bit data is divided by 255 (as
  torchvision's ``ToTensor``); 16-bit (``I;16``), 32-bit and float images are
  scaled by their own minimum and maximum. EXIF orientation is applied.
* DICOM through :class:`DicomReader` (pydicom 2.4 and 3.x): files without
  preamble or file meta are read with ``force=True``; the modality LUT (rescale
  slope / intercept) and the VOI LUT or window are applied and the window's
  output range maps to ``[0, 1]`` (else the pixel range does); ``MONOCHROME1``
  is inverted. Only single-frame images are accepted.
* NIfTI (``.nii``, ``.nii.gz``) through :class:`monai.data.NibabelReader`: the
  first two axes (NIfTI x = columns, y = rows) are swapped to ``(rows, columns)``
  and singleton axes dropped; values are scaled by their minimum and maximum.

The format is recognised from the file's first bytes, not its name, so a DICOM
file without extension or a PNG called ``.jpg`` is read correctly. Anything
that cannot be read raises :class:`~cxrkit.data.errors.BadImageError` naming the
file and the problem. No patient attribute of a DICOM file reaches the metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from monai.data import ImageReader, NibabelReader, PILReader
from monai.utils import ensure_tuple
from PIL import Image, ImageOps
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrkit.data.errors import BadImageError, decoding

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
except ImportError:  # pydicom 2.4 (forced by MONAI Label)
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space

__all__ = [
    "CXRImageReader",
    "DicomReader",
    "load_image",
    "read_dicom_dataset",
    "read_radiograph",
    "sniff_format",
    "PYDICOM_MAJOR",
]

PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

_PIL_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")
_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_GROUPS = {0x02, 0x08, 0x10, 0x18, 0x20, 0x28}  # first group of a DICOM stream without preamble
_PIL_GREY_MODES = {"1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def sniff_format(path: str | os.PathLike) -> str:
    """Recognise a file's format from its first bytes (and, for NIfTI and bare DICOM, its name).

    Args:
        path: the file.

    Returns:
        ``"pil"`` (PNG, JPEG, BMP, TIFF, GIF), ``"dicom"`` or ``"nifti"``.

    Raises:
        BadImageError: missing, empty, or not an image format cxrkit reads.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(352)
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot open the file: {exc.strerror or exc}") from None
    if p.is_dir():
        raise BadImageError(path, "is a folder, not an image file")
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    name = p.name.lower()
    if head.startswith(_PIL_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "pil"
    if head[128:132] == b"DICM":
        return "dicom"
    if name.endswith(_NIFTI_SUFFIXES) or head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    suffix = "" if "." not in name else name[name.rindex("."):]
    bare_stream = len(head) > 8 and head[1] == 0 and head[3] == 0 and head[0] in _DICOM_GROUPS
    if suffix in _DICOM_SUFFIXES or bare_stream:  # bare stream: a data set without preamble, e.g. (0008,0005)
        return "dicom"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        hint = "it is a text file"
    else:
        hint = f"it starts with the bytes {head[:8]!r}"
    raise BadImageError(path, f"not an image format cxrkit reads (PNG, JPEG, BMP, TIFF, DICOM, NIfTI); {hint}")


# -- PNG / JPEG / ... ---------------------------------------------------------------------------
def pil_to_grey(img: Image.Image) -> Image.Image:
    """A PIL image as one grey channel, keeping 16-bit and float data as they are."""
    if img.format == "JPEG" or "exif" in img.info:
        img = ImageOps.exif_transpose(img) or img
    if img.mode in _PIL_GREY_MODES:
        return img.convert("L") if img.mode == "1" else img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        img = img.convert("RGB") if img.mode.startswith("RGB") else img.getchannel(0)
    return img if img.mode == "L" else img.convert("RGB").convert("L")


def _pil_array(path: str) -> tuple[np.ndarray, dict]:
    reader = PILReader(converter=pil_to_grey, reverse_indexing=False)
    img = reader.read(path)
    try:
        data, meta = reader.get_data(img)
    finally:
        img.close()
    if data.ndim != 2:
        raise ValueError(f"unexpected image shape {data.shape}")
    if data.dtype == np.uint8:
        out = data.astype(np.float32) / 255.0
    elif data.dtype == bool:
        out = data.astype(np.float32)
    else:
        out = _min_max(data)
    return out, {"format": meta.get("format"), "mode": meta.get("mode")}


# -- DICOM ---------------------------------------------------------------------------------------
def read_dicom_dataset(path: str | os.PathLike, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read a DICOM file, also without preamble or file meta (``force=True``).

    A missing Transfer Syntax UID is filled in from the encoding pydicom detected,
    so the pixel data of such files can be decoded (pydicom 2.4 and 3.x).
    """
    ds = pydicom.dcmread(str(path), force=True, stop_before_pixels=stop_before_pixels)
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        encoding = getattr(ds, "original_encoding", None)  # pydicom 3
        if encoding is None:  # pydicom 2.4
            encoding = (ds.read_implicit_vr, ds.read_little_endian)
        implicit, little = encoding
        if implicit is None or little is None:
            implicit, little = True, True
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The output range of pydicom's VOI LUT / windowing for ``ds`` (DICOM PS3.3 C.11.2)."""
    if ds.get("VOILUTSequence"):
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def dicom_to_array(ds: pydicom.Dataset, voi: bool = True) -> np.ndarray:
    """Pixel data of a single-frame DICOM image as ``(rows, columns)`` float32 in ``[0, 1]``.

    Raises:
        ValueError: no pixel data, several frames, or a pixel format that cannot be decoded.
    """
    if "PixelData" not in ds:
        raise ValueError("no Pixel Data (7FE0,0010) element: not a DICOM image, or an unreadable file")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{frames} frames; cxrkit reads single-frame radiographs")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) > 1 or arr.ndim == 3:
        if photometric.startswith("YBR") and PYDICOM_MAJOR < 3:  # pydicom 3 converts to RGB itself
            arr = convert_color_space(arr, photometric, "RGB")
        grey = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return _scale(grey, 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1))
    arr = apply_modality_lut(arr, ds)
    has_voi = ds.get("VOILUTSequence") or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)
    if voi and has_voi:
        arr = apply_voi_lut(arr, ds, index=0)
        out = _scale(arr, *_voi_output_range(ds))
    else:
        out = _min_max(arr)
    return 1.0 - out if photometric == "MONOCHROME1" else out


class DicomReader(ImageReader):
    """MONAI image reader for single-frame DICOM radiographs through pydicom.

    Unlike :class:`monai.data.PydicomReader` it reads files without preamble or
    file meta, applies the VOI LUT / window and inverts ``MONOCHROME1``, and
    returns ``(rows, columns)`` data in ``[0, 1]``. Metadata holds no patient
    attributes.

    Args:
        voi: apply the VOI LUT or window when the file has one.
    """

    def __init__(self, voi: bool = True) -> None:
        super().__init__()
        self.voi = voi

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(sniff_format_quiet(f) == "dicom" for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> pydicom.Dataset:
        names = ensure_tuple(data)
        if len(names) != 1:
            raise ValueError("DicomReader reads one file at a time")
        return read_dicom_dataset(names[0])

    def get_data(self, img: pydicom.Dataset) -> tuple[np.ndarray, dict]:
        arr = dicom_to_array(img, voi=self.voi)
        meta = {
            "format": "DICOM",
            "modality": str(img.get("Modality", "")),
            "photometric_interpretation": str(img.get("PhotometricInterpretation", "")),
            "spatial_shape": np.asarray(arr.shape),
            "original_channel_dim": "no_channel",
        }
        return arr, meta


# -- NIfTI ---------------------------------------------------------------------------------------
def _nifti_array(path: str) -> tuple[np.ndarray, dict]:
    reader = NibabelReader(squeeze_non_spatial_dims=True)
    data, _ = reader.get_data(reader.read(path))
    data = np.squeeze(np.asarray(data))
    if data.ndim != 2:
        raise ValueError(f"NIfTI image of shape {tuple(data.shape)}; cxrkit reads 2D radiographs only")
    return _min_max(np.ascontiguousarray(data.T)), {"format": "NIfTI"}


# -- common --------------------------------------------------------------------------------------
def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if not hi > lo:
        return _min_max(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0))
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def sniff_format_quiet(path: str | os.PathLike) -> str | None:
    """:func:`sniff_format` returning ``None`` instead of raising."""
    try:
        return sniff_format(path)
    except BadImageError:
        return None


FORMAT_NAMES = {"pil": "image", "dicom": "DICOM", "nifti": "NIfTI"}


def read_radiograph(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read any supported file as ``(rows, columns)`` float32 in ``[0, 1]`` plus format metadata.

    Raises:
        BadImageError: the file is missing, empty, corrupt, truncated or not an image.
    """
    path = str(path)
    kind = sniff_format(path)
    with decoding(path, f"cannot decode this {FORMAT_NAMES[kind]} file"):
        if kind == "pil":
            data, meta = _pil_array(path)
        elif kind == "dicom":
            reader = DicomReader()
            data, meta = reader.get_data(reader.read(path))
        else:
            data, meta = _nifti_array(path)
    if min(data.shape) < 2:
        raise BadImageError(path, f"image of size {data.shape} is too small")
    meta.update({"spatial_shape": np.asarray(data.shape), "original_channel_dim": "no_channel"})
    return data.astype(np.float32, copy=False), meta


def load_image(path: str | os.PathLike) -> np.ndarray:
    """A radiograph as a 2D ``(rows, columns)`` float32 array in ``[0, 1]`` (for prediction and Grad-CAM).

    Raises:
        BadImageError: the file cannot be read; the message names it and says why.
    """
    return read_radiograph(path)[0]


class _Pending:
    """A file handed from :meth:`CXRImageReader.read` to :meth:`CXRImageReader.get_data`."""

    def __init__(self, path: str) -> None:
        self.path = path


class CXRImageReader(ImageReader):
    """One MONAI reader for every radiograph format (see the module docstring).

    ``read`` only records the file: MONAI's ``LoadImage`` turns exceptions from
    ``read`` into a generic "cannot find a suitable reader" error, so all
    decoding happens in ``get_data``, where a :class:`BadImageError` naming the
    file reaches the caller unchanged.
    """

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return True  # the format is recognised from the content

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> _Pending:
        names = ensure_tuple(data)
        if len(names) != 1:
            raise ValueError("CXRImageReader reads one file at a time")
        return _Pending(str(names[0]))

    def get_data(self, img: _Pending) -> tuple[np.ndarray, dict]:
        return read_radiograph(img.path)
