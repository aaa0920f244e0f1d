"""The experiment's stages in one process through ``mid_core`` (no Ray, Zarr or MLflow imported): what
``scripts/headline_direct.py`` runs on a machine without them, e.g. a lent GPU box.

``budget`` (time budget, epoch rule), ``results`` (``results.json``), ``attacks`` (adversarial views of in-memory
splits), ``training`` (teacher, MID variants, AT), ``benchmark`` (step times), ``evaluation`` (table rows).
"""
