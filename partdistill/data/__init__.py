"""Datasets: layout checks (and, as they land, loaders, the catalog and synthetic data)."""
