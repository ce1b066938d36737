"""Test-only stand-in for torchvision.transforms."""
