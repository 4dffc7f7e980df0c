"""Models: transformers' Mask2Former (built from config or pretrained weights), backbone features,
batched k-means, pixel grouping and dense-CRF smoothing. Modules import torch/transformers lazily
from here: use `partdistill.models.mask2former`, `.kmeans`, `.grouping`, `.dcrf` directly."""
