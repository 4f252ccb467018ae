# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""Emotion conditioning for the rows of one batch."""

from tts import gpu_slots, jobs

with jobs.job_log(snakemake.log[0]):
    gpu_slots.claim_gpu(snakemake.config)  # this job's own GPU, before any CUDA call
    jobs.run_emotion(
        snakemake.config,
        list(snakemake.input.specs),
        list(snakemake.input.speakers) + list(snakemake.input.emotion_prompts),
        snakemake.output.tensors,
        snakemake.output.status,
        snakemake.threads,
    )
