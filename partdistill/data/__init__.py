"""Datasets: `load(name)` records and `metadata(name)` classes for every catalog name."""

__all__ = ["NAMES", "Metadata", "load", "metadata", "register_detectron2"]


def __getattr__(name: str):
    # lazy: the config resolver imports data.layout, and the catalog imports the resolver
    if name in __all__:
        from partdistill.data import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module 'partdistill.data' has no attribute {name!r}")
