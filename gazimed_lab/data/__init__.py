"""Data: MNI grids, manifests, image checks, normalization, QA, splits, caching, the datamodule."""
