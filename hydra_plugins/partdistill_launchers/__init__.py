"""partdistill's Hydra launchers (`hydra/launcher=local|slurm`), found by Hydra's plugin discovery."""
