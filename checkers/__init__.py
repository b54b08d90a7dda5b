"""Checkers of the lab pack: one module per lab (check_labN.py), shared helpers in common.py."""
