"""partdistill: PartDistillation (CVPR 2023) as a Hydra-configured training and evaluation launcher."""

__version__ = "0.1.0"
