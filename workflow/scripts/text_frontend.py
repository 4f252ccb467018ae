# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Text front-end for the rows of one batch (a CPU job: it claims no GPU)."""

from tts import jobs

with jobs.job_log(snakemake.log[0]):
    jobs.run_text(
        snakemake.config,
        list(snakemake.input.specs),
        snakemake.output.status,
        snakemake.threads,
    )
