"""Zero-shot evaluation harnesses (SAM paper §7, App. D), one module per task."""
