"""cmim: a reproducibility pipeline for contrastive masked image modeling (CAN, CMAE, MAE, SimCLR)."""

__version__ = "0.1.0"
