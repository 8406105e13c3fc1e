"""3D-only pipeline for raw industrial scans (paper §3.6, §4.2)."""
