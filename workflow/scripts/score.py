# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Intelligibility and speaker similarity for the rows of one batch."""

from tts import gpu_slots, jobs

with jobs.job_log(snakemake.log[0]):
    gpu_slots.claim_gpu(snakemake.config)  # this job's own GPU, before any CUDA call
    jobs.run_score(
        snakemake.config,
        list(snakemake.input.specs),
        snakemake.input.render_status,
        snakemake.input.wav,
        snakemake.output.status,
        snakemake.threads,
    )
