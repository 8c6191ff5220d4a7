"""Easel: the library."""
