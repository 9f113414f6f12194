"""Reading and writing volumes: NIfTI (.nii.gz, .nii) with nibabel, .nrrd / .mha with SimpleITK where it is
installed, and the 2D form of an nnU-Net data set (.png, .tif) as volumes of one slice.

A volume is an array in the file's voxel order (i, j, k) with its 4x4 voxel-to-world affine (RAS, as
nibabel gives it) and voxel spacing in mm. Arrays read with SimpleITK are transposed from its (z, y, x)
to (x, y, z) so that every format indexes alike. Written volumes take the geometry (affine, spacing,
orientation, NIfTI header codes) of a reference file: a viewer overlays them on the input without
registration. Every write is atomic (a temporary file renamed into place). Errors name the file.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_bytes
from ..errors import DataError, UserError

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".mha")
FLAT_ENDINGS = (".png", ".tif", ".tiff")  # nnU-Net's 2D data sets: one slice per file
VOLUME_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS
ENDINGS = VOLUME_ENDINGS + FLAT_ENDINGS
FLAT_SPACING = 999.0  # the spacing of the slice axis of a 2D file (as nnU-Net's 2D reader gives it)


def ending_of(path: Path | str) -> str | None:
    """The supported file ending of `path` ('.nii.gz' before '.gz'), or None."""
    name = Path(path).name.lower()
    return next((e for e in ENDINGS if name.endswith(e)), None)


def strip_ending(path: Path | str) -> str:
    e = ending_of(path)
    name = Path(path).name
    return name[: -len(e)] if e else Path(path).stem


def nibabel():
    try:
        import nibabel as nib
    except ImportError:
        raise UserError("reading NIfTI volumes needs nibabel: pip install segdiff[medical]") from None
    return nib


def simpleitk(path: Path):
    try:
        import SimpleITK as sitk
    except ImportError:
        raise UserError(
            f"{path}: reading {ending_of(path)} files needs SimpleITK (pip install SimpleITK); or convert the "
            "data set to .nii.gz"
        ) from None
    return sitk


@dataclass(frozen=True)
class VolumeInfo:
    """A volume file's geometry, read from its header: shape (i, j, k), affine (voxel -> world, RAS, mm), spacing."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]

    def same_grid(self, other: VolumeInfo, tol: float = 1e-3) -> str | None:
        """None when `other` lies on the same voxel grid; else what differs (shape or affine), for an error."""
        if self.shape != other.shape:
            return f"shape {other.shape} differs from {self.path.name}'s {self.shape}"
        if not np.allclose(self.affine, other.affine, atol=tol, rtol=0):
            diff = float(np.abs(self.affine - other.affine).max())
            return f"affine (voxel-to-world geometry) differs from {self.path.name}'s by up to {diff:.4g} mm"
        return None


def _itk_affine(img) -> np.ndarray:
    """SimpleITK's LPS direction, spacing and origin -> a RAS affine in (x, y, z) voxel order, as nibabel's."""
    d = np.asarray(img.GetDirection(), np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a  # LPS -> RAS


def _shape3(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]  # a 3-D volume stored with trailing singleton axes
    if len(shape) == 2:
        return (*shape, 1)
    if len(shape) != 3:
        raise DataError(
            f"{path}: a {len(shape)}-D file (shape {shape}); give one 3-D volume per file (channels as separate "
            "files CASE_0000, CASE_0001, ...)"
        )
    return shape  # type: ignore[return-value]


def read_info(path: Path | str) -> VolumeInfo:
    """A volume file's shape, affine and spacing from its header (no voxels read)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    ending = ending_of(path)
    try:
        if ending in NIFTI_ENDINGS:
            img = nibabel().load(str(path))
            shape = _shape3(img.shape, path)
            zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * (3 - len(img.header.get_zooms()))
            return VolumeInfo(path, shape, np.asarray(img.affine, np.float64), zooms[:3])
        if ending in ITK_ENDINGS:
            sitk = simpleitk(path)
            r = sitk.ImageFileReader()
            r.SetFileName(str(path))
            r.ReadImageInformation()
            if r.GetDimension() != 3 or r.GetNumberOfComponents() != 1:
                raise DataError(f"{path}: expected a 3-D single-component volume, got {r.GetDimension()}-D")
            img = sitk.Image([1, 1, 1], sitk.sitkUInt8)
            img.SetDirection(r.GetDirection())
            img.SetSpacing(r.GetSpacing())
            img.SetOrigin(r.GetOrigin())
            return VolumeInfo(path, tuple(int(s) for s in r.GetSize()), _itk_affine(img), tuple(r.GetSpacing()))
        if ending in FLAT_ENDINGS:
            arr = _read_flat(path)
            return VolumeInfo(path, arr.shape, np.diag([1.0, 1.0, FLAT_SPACING, 1.0]), (1.0, 1.0, FLAT_SPACING))
    except (DataError, UserError):
        raise
    except Exception as exc:  # nibabel and SimpleITK raise many types for a damaged header
        raise DataError(f"{path}: cannot read the volume's header ({type(exc).__name__}: {str(exc)[:200]})") from None
    raise DataError(f"{path}: not a supported volume file ({', '.join(ENDINGS)})")


def _read_flat(path: Path) -> np.ndarray:
    from .io import read_raw

    arr = read_raw(path)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # alpha
        if not (arr == arr[..., :1]).all():
            raise DataError(f"{path}: a colour image; give each channel its own file (CASE_0000, CASE_0001, ...)")
        arr = arr[..., 0]
    return arr[..., None]  # one slice along the last axis


def read_array(path: Path | str, dtype=np.float32) -> np.ndarray:
    """A volume file's voxels as `dtype` [i, j, k]; a damaged or truncated file is a DataError naming it."""
    path = Path(path)
    info = read_info(path)
    ending = ending_of(path)
    try:
        if ending in NIFTI_ENDINGS:
            img = nibabel().load(str(path))
            arr = np.asarray(img.dataobj).reshape(info.shape)
        elif ending in ITK_ENDINGS:
            sitk = simpleitk(path)
            arr = np.ascontiguousarray(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0))
        else:
            arr = _read_flat(path)
    except (DataError, UserError):
        raise
    except Exception as exc:  # zlib, EOFError, OSError ...: a truncated or damaged file
        raise DataError(
            f"{path}: cannot read the volume's voxels ({type(exc).__name__}: {str(exc)[:200]}); is the file "
            "truncated or damaged?"
        ) from None
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"{path}: holds NaN or infinite values; replace them before using it")
    return np.asarray(arr, dtype=dtype)


def write_like(path: Path | str, array: np.ndarray, reference: Path | str) -> None:
    """Write `array` ([i, j, k] or [i, j, k, n]) atomically in the format of `path`'s ending, with the geometry
    of the volume file `reference` (affine, spacing, orientation; NIfTI header codes kept)."""
    path, reference = Path(path), Path(reference)
    ending = ending_of(path)
    if ending in NIFTI_ENDINGS:
        nib = nibabel()
        ref = nib.load(str(reference))
        header = ref.header.copy()
        header.set_data_dtype(array.dtype)
        img = nib.Nifti1Image(array, ref.affine, header)
        img.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
        img.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
        if array.ndim == 4:
            img.header.set_zooms(tuple(ref.header.get_zooms()[:3]) + (1.0,))
        data = img.to_bytes()
        atomic_write_bytes(path, gzip.compress(data, compresslevel=6) if ending == ".nii.gz" else data)
    elif ending in ITK_ENDINGS:
        sitk = simpleitk(path)
        r = sitk.ImageFileReader()
        r.SetFileName(str(reference))
        r.ReadImageInformation()
        vec = array.ndim == 4
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(array, (0, 1, 2), (2, 1, 0))), isVector=vec)
        img.SetSpacing(r.GetSpacing())
        img.SetOrigin(r.GetOrigin())
        img.SetDirection(r.GetDirection())
        atomic_write(path, lambda p: sitk.WriteImage(img, str(p), True))
    elif ending in FLAT_ENDINGS:
        from .io import write_float_tiff, write_png

        plane = array[:, :, 0] if array.ndim == 3 else np.moveaxis(array[:, :, 0], -1, 0)
        if ending == ".png" and plane.ndim == 2 and np.issubdtype(plane.dtype, np.integer):
            atomic_write(path, lambda p: write_png(p, plane))
        else:
            atomic_write(path, lambda p: write_float_tiff(p, plane))
    else:
        raise DataError(f"{path}: cannot write this format ({', '.join(ENDINGS)})")
