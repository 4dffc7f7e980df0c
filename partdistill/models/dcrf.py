"""Dense-CRF smoothing of part labels (optional; the paper's post-processing of pixel grouping).

Needs pydensecrf2 (`pip install "partdistill[crf]"`; it compiles with a C++ compiler). Without it,
enabling `stage.dcrf.enabled` stops with that instruction: the step is never silently skipped.
"""
from __future__ import annotations

import numpy as np

from partdistill.errors import DenseCRFUnavailable


def require_dense_crf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise DenseCRFUnavailable(
            "stage.dcrf.enabled=true needs pydensecrf: pip install 'partdistill[crf]' (pydensecrf2, built with a "
            "C++ compiler), or set stage.dcrf.enabled=false"
        ) from exc
    return dcrf


def dense_crf(image: np.ndarray, labels: np.ndarray, num_labels: int, params) -> np.ndarray:
    """Refined labels of an [H, W] map (0 = background, 1..num_labels-1 = parts) over its [H, W, 3] image.

    `params` has the paper's settings (conf: stage.dcrf): unary_gt_prob 0.7, a Gaussian kernel
    (sxy 3, compat 3), a bilateral one (sxy 20, srgb 13, compat 10), and the iteration count (10).
    """
    dcrf = require_dense_crf()
    from pydensecrf.utils import unary_from_labels

    height, width = labels.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(unary_from_labels(labels.astype(np.int32), num_labels, gt_prob=params.unary_gt_prob, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat, kernel=dcrf.DIAG_KERNEL,
                            normalization=dcrf.NORMALIZE_SYMMETRIC)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image.copy(order="C"),  # pydensecrf writes nothing but rejects read-only buffers
                             compat=params.bilateral_compat, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    q = np.asarray(crf.inference(params.iterations))
    return q.argmax(axis=0).reshape(height, width)
