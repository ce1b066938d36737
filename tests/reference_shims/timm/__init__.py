"""Test-only stand-in for timm (see tests/reference_shims/README.md)."""
