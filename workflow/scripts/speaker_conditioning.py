# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Speaker conditioning for one prompt file."""

from tts import jobs

with jobs.job_log(snakemake.log[0]):
    jobs.run_speaker(
        snakemake.config,
        snakemake.input.audio,
        snakemake.output.tensors,
        snakemake.output.status,
        snakemake.threads,
    )
