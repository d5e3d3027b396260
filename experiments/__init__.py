"""Experiments that run the whole method on real models (not part of `make test`; each has a make target)."""
