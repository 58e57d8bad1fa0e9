"""segbench: a reproducible benchmark suite for 2D medical image segmentation."""
__version__ = "0.1.0"
