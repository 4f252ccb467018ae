# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""First rule: stop with the list of missing checkpoint files and where to get them."""

from tts import jobs

with jobs.job_log(snakemake.log[0]):
    jobs.run_check(snakemake.config, snakemake.output[0])
