"""Frozen encoders (DINO ViT-B/8, Point-MAE), geometry, pixel-aligned feature extraction, weights, cache."""
