"""The search spaces, one YAML file per method: data, not code.

This directory is also the package `sweeps.search_spaces` of the installed project (pyproject.toml maps it
here and ships the YAML files as its package data), so `tinymem-sweep` finds them from any directory.
"""
