"""Shared by every process of the grader: the lab registry, hint texts and process start-up (standard library only)."""
