"""The package version, in one place (imported by the package root, artefacts and data records)."""

__version__ = "0.1.0"
