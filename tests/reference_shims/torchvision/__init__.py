"""Test-only stand-in for torchvision (see tests/reference_shims/README.md)."""
