# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""DiT + vocoder for the rows of one batch: one WAV per row that is still ok."""

from tts import gpu_slots, jobs

with jobs.job_log(snakemake.log[0]):
    gpu_slots.claim_gpu(snakemake.config)  # this job's own GPU, before any CUDA call
    jobs.run_render(
        snakemake.config,
        list(snakemake.input.specs),
        list(snakemake.input.speakers),
        snakemake.input.tokens,
        snakemake.input.tokens_status,
        snakemake.output.wav,
        snakemake.output.status,
        snakemake.threads,
    )
