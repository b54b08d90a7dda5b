"""Shared by every process of the grader: the lab registry, hint texts and process start-up (standard library only)."""

VERSION = "2026.12"  # the release; a gradebook also records a digest of the grading code (parent.gradebook.version)
