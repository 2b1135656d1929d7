"""Models the chapters train."""
