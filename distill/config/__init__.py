"""Presets, model names, and every parameter declared once (help, preset path, rule, reuse key)."""
