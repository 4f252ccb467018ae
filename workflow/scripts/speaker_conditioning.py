# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Speaker conditioning for one prompt file."""

from tts import gpu_slots, jobs

with jobs.job_log(snakemake.log[0]):
    gpu_slots.claim_gpu(snakemake.config)  # this job's own GPU, before any CUDA call
    jobs.run_speaker(
        snakemake.config,
        snakemake.input.audio,
        snakemake.output.tensors,
        snakemake.output.status,
        snakemake.threads,
    )
