"""Checkers of the lab pack: one module per lab (check_labN.py); what they share is in judge/."""
