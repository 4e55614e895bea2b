"""Reading every image format: real samples (PNG, JPEG, RGBA, two DICOMs) and fabricated ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from PIL import Image

from cxrkit.data import BadImageError, load_image
from cxrkit.data.readers import CXRImageReader, DicomReader, read_dicom_dataset, read_radiograph, sniff_format
from support.paths import shared_data

GRADIENT = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (40, 1))  # 40 rows x 60 columns, not square


def _assert_unit(arr: np.ndarray, shape: tuple[int, int] | None = None) -> None:
    assert arr.dtype == np.float32 and arr.ndim == 2
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    if shape is not None:
        assert arr.shape == shape


@pytest.mark.parametrize("collection", ["radiography", "coronahack", "cohen"])
def test_every_real_sample_image_reads(collection):
    root = shared_data(collection)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".png", ".jpg", ".jpeg"}]
    assert len(files) >= 48
    modes = set()
    for path in files:
        with Image.open(path) as img:
            modes.add(img.mode)
            size = img.size
        arr = load_image(path)
        _assert_unit(arr, (size[1], size[0]))  # (rows, columns)
        assert arr.std() > 0.01, path  # a real picture, not a blank
    if collection == "cohen":
        assert {"L", "RGB", "RGBA"} <= modes


def test_radiography_rgb_png_matches_its_grey_channel():
    path = next(shared_data("radiography", "COVID-19_Radiography_Dataset", "COVID").glob("*.png"))
    with Image.open(path) as img:
        assert img.mode == "RGB"
        red = np.asarray(img)[..., 0]
    np.testing.assert_allclose(load_image(path), red / 255.0, atol=1 / 255 + 1e-6)


def test_dicom_monochrome1_without_preamble_is_inverted():
    path = shared_data("dicom", "CR-MONO1-10-chest")
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)  # no preamble, no file meta: plain reading fails
    assert sniff_format(path) == "dicom"
    ds = read_dicom_dataset(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    arr = load_image(path)
    _assert_unit(arr, (440, 440))
    # inversion: a brighter output pixel had a lower stored value
    assert np.corrcoef(raw.ravel(), arr.ravel())[0, 1] < -0.99
    # anatomy: lungs darker than the spine between them, the collimated corner darkest
    lungs = np.r_[arr[150:250, 80:150].ravel(), arr[150:250, 290:360].ravel()].mean()
    spine = arr[150:250, 205:235].mean()
    assert lungs + 0.1 < spine
    assert arr[:15, -15:].mean() < lungs


def test_dicom_monochrome2_dx():
    path = shared_data("dicom", "nih-cxr-dx-monochrome2.dcm")
    raw = pydicom.dcmread(path).pixel_array
    arr = load_image(path)
    _assert_unit(arr, (1024, 1024))
    np.testing.assert_allclose(arr, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)


def _dicom(path: Path, pixels: np.ndarray, **attrs) -> Path:
    ds = pydicom.dcmread(shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path)
    return path


def test_dicom_rescale_and_window_applied(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (30, 1))  # 0 .. 3900
    # rescale to -1000 .. 2900, window [0, 1000] -> everything below 0 black, above 1000 white
    path = _dicom(tmp_path / "w.dcm", pixels, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=500,
                  WindowWidth=1000)
    arr = load_image(path)
    _assert_unit(arr, (30, 40))
    value = pixels[0].astype(float) - 1000
    assert np.all(arr[0][value <= 0] < 0.01) and np.all(arr[0][value >= 1000] > 0.99)
    inside = (value > 50) & (value < 950)
    np.testing.assert_allclose(arr[0][inside], value[inside] / 1000, atol=0.01)
    flat = load_image(_dicom(tmp_path / "nowin.dcm", pixels))  # no window: full range
    np.testing.assert_allclose(flat[0], pixels[0] / 3900, atol=1e-6)


def test_16bit_png(tmp_path):
    data = (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 7 + 1000).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
    arr = load_image(tmp_path / "deep.png")
    _assert_unit(arr, (40, 60))
    np.testing.assert_allclose(arr, (data - 1000.0) / (data.max() - 1000.0), atol=1e-5)


def test_palette_png(tmp_path):
    img = Image.fromarray(GRADIENT).convert("P")
    assert img.mode == "P"
    img.save(tmp_path / "pal.png")
    np.testing.assert_allclose(load_image(tmp_path / "pal.png"), GRADIENT / 255.0, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGB", "1"])
def test_other_png_modes(tmp_path, mode):
    Image.fromarray(GRADIENT).convert(mode).save(tmp_path / "x.png")
    arr = load_image(tmp_path / "x.png")
    _assert_unit(arr, (40, 60))
    if mode != "1":
        np.testing.assert_allclose(arr, GRADIENT / 255.0, atol=1 / 255 + 1e-6)


def test_jpeg_with_png_suffix_is_recognised_by_content(tmp_path):
    Image.fromarray(GRADIENT).save(tmp_path / "mislabelled.png", format="JPEG", quality=95)
    np.testing.assert_allclose(load_image(tmp_path / "mislabelled.png"), GRADIENT / 255.0, atol=0.03)


@pytest.mark.parametrize("name", ["x.nii", "x.nii.gz"])
def test_nifti_is_transposed_to_rows_columns(tmp_path, name):
    # NIfTI stores x (columns) first: a 40x60 picture is a 60x40 array
    nib.save(nib.Nifti1Image(GRADIENT.T.astype(np.int16), np.eye(4)), tmp_path / name)
    arr = load_image(tmp_path / name)
    _assert_unit(arr, (40, 60))
    np.testing.assert_allclose(arr, GRADIENT / GRADIENT.max(), atol=1e-6)


def test_nifti_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), tmp_path / "ct.nii.gz")
    with pytest.raises(BadImageError, match="ct.nii.gz.*2D radiographs only"):
        load_image(tmp_path / "ct.nii.gz")


@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_monai_loadimage_uses_the_readers(tmp_path):
    shutil.copy(shared_data("dicom", "CR-MONO1-10-chest"), tmp_path / "cr")  # no suffix, no preamble
    img = LoadImage(reader=CXRImageReader(), image_only=True, ensure_channel_first=True)(tmp_path / "cr")
    assert tuple(img.shape) == (1, 440, 440)
    np.testing.assert_allclose(img[0].numpy(), load_image(tmp_path / "cr"), atol=1e-6)
    dicom = LoadImage(reader=DicomReader(), image_only=True, ensure_channel_first=True)(tmp_path / "cr")
    assert tuple(dicom.shape) == (1, 440, 440)
    assert "PatientName" not in dicom.meta and "PatientID" not in dicom.meta


def test_metadata_has_no_patient_attributes():
    _, meta = read_radiograph(shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"))
    assert meta["format"] == "DICOM" and meta["modality"] == "DX"
    assert not any("patient" in key.lower() for key in meta)


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    pixels = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (30, 1))
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value, bits
    lut.add_new(0x00283006, "US", [4095 - v for v in range(4096)])  # LUT Data: reversing, easy to recognise
    path = _dicom(tmp_path / "lut.dcm", pixels, VOILUTSequence=pydicom.Sequence([lut]))
    np.testing.assert_allclose(load_image(path)[0], 1 - pixels[0] / 4095, atol=1e-4)


def test_bare_dicom_with_any_suffix_and_non_images_without_suffix(tmp_path):
    shutil.copy(shared_data("dicom", "CR-MONO1-10-chest"), tmp_path / "chest.IMA")
    assert sniff_format(tmp_path / "chest.IMA") == "dicom"
    (tmp_path / "README").write_text("just some text")
    with pytest.raises(BadImageError, match="README.*it is a text file"):
        load_image(tmp_path / "README")
