"""5-point face alignment to the standard 112×112 ArcFace template, and its inverse.

The similarity transform (rotation, uniform scale, translation) is fitted by least squares
(Umeyama, via scikit-image); warping uses OpenCV. :func:`paste_back` maps a perturbation made on the
aligned crop back onto the original photo, which is what ``protect`` needs.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# Landmarks (left eye, right eye, nose tip, left mouth corner, right mouth corner) of the 112×112 template
# used by ArcFace/insightface, in pixel coordinates.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGNED_SIZE = 112


def estimate_similarity(landmarks: np.ndarray, template: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity transform mapping ``landmarks`` (5, 2) onto ``template``; a 2×3 matrix.

    Raises:
        ValueError: landmarks of the wrong shape, non-finite, or degenerate (all in one place).
    """
    src = np.asarray(landmarks, dtype=np.float64)
    if src.shape != template.shape or not np.isfinite(src).all():
        raise ValueError(f"expected finite landmarks of shape {template.shape}, got {src.shape}")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, template)
    else:
        tform = SimilarityTransform()
        tform = tform if tform.estimate(src, template) else None
    if not tform or not np.isfinite(tform.params).all() or abs(np.linalg.det(tform.params[:2, :2])) < 1e-12:
        raise ValueError("degenerate landmarks: cannot fit a similarity transform")
    return tform.params[:2].copy()


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` (H, W, C uint8) so its 5 landmarks land on the template.

    Returns:
        (aligned ``size``×``size`` crop, the 2×3 matrix from photo to crop coordinates).
    """
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    matrix = estimate_similarity(landmarks, template)
    aligned = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return aligned, matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2×3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def paste_back(
    delta: np.ndarray, matrix: np.ndarray, photo_shape: tuple[int, int], feather: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """Map a perturbation made on the aligned crop back onto the photo.

    Args:
        delta: (S, S, C) float perturbation in the aligned frame.
        matrix: the 2×3 photo → crop matrix from :func:`align_face`.
        photo_shape: (height, width) of the photo.
        feather: width of the soft edge, as a fraction of the crop side.

    Returns:
        (perturbation on the photo, (H, W, C) float; weight mask in [0, 1], (H, W)). The perturbation is
        zero outside the face region and fades out over the feathered edge.
    """
    h, w = photo_shape
    size = delta.shape[0]
    inverse = invert_affine(matrix)
    mask = np.zeros((size, size), np.float32)
    edge = max(1, int(round(feather * size)))
    mask[edge:-edge, edge:-edge] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=edge / 2) if edge > 1 else mask
    warped = cv2.warpAffine(delta.astype(np.float32), inverse, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = cv2.warpAffine(mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    if warped.ndim == 2:
        warped = warped[..., None]
    return warped * weight[..., None], weight
