"""Datasets, readers, transforms, preprocessing and the synthetic generator."""
