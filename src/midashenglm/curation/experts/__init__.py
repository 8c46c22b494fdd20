"""Experts: one analysis of a clip each, with a declared output schema and a version.

See :mod:`midashenglm.curation.experts.base` for the interface and
:mod:`midashenglm.curation.experts.registry` for the list the pipeline runs.
"""
