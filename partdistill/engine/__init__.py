"""What runs inside a job: distributed set-up and what a job does when SLURM is about to stop it."""
