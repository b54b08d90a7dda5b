"""The judge: runs the checks against a worker, computes every verdict; never imports or runs student code."""
