"""Tests that submit real sbatch jobs to a one-node Slurm on localhost (tests/slurm/cluster.py)."""
