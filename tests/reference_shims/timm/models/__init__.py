"""Test-only stand-in for timm.models."""
