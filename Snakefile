"""IndexTTS2 batch workflow: texts table in, audio and a report you can trust out.

    snakemake --cores 1 --resources gpu=1
    snakemake --cores 1 --config checkpoints=DIR texts=PATH device=cpu results=DIR

Everything is documented in docs/workflow.md. The rules stay thin: the work is done by the
`tts` package (tts.jobs for the table, specs, batches and stages; tts.report for the report).
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/speakers.smk"
include: "workflow/rules/emotion.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/tokens.smk"
include: "workflow/rules/render.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output.html,
        rules.report.output.metrics,
