# ruff: noqa: F821 - `snakemake` is injected by Snakemake
"""report.html, metrics.tsv and audio/ for the rows of the texts table."""

from tts import jobs, report

with jobs.job_log(snakemake.log[0]):
    report.build(
        results=jobs.results_dir(snakemake.config),
        config=snakemake.config,
        html=snakemake.output.html,
        metrics=snakemake.output.metrics,
        audio_dir=snakemake.output.audio,
        check=snakemake.input.check,
        validation=snakemake.input.validation,
    )
