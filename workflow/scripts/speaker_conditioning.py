# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Speaker conditioning for one group of prompt files."""

from tts import gpu_slots, jobs

with jobs.job_log(snakemake.log[0]):
    gpu_slots.claim_gpu(snakemake.config)  # this job's own GPU, before any CUDA call
    jobs.run_speakers(
        snakemake.config,
        dict(snakemake.params.speakers),
        snakemake.output[0],
        snakemake.threads,
    )
