"""Datasets for the book's chapters, all fetched through one checksummed, cached download helper."""

from accel.datasets.cache import ChecksumError, DownloadError, cache_dir, download

__all__ = ["ChecksumError", "DownloadError", "cache_dir", "download"]
