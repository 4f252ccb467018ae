# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Strictly load every weight file of the checkpoint set once; stop on any broken file."""

from tts import jobs

with jobs.job_log(snakemake.log[0]):
    jobs.run_validate(snakemake.config, snakemake.output[0])
