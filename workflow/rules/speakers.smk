"""Speaker conditioning: one job per group of prompt files, shared by all their rows."""


rule speaker_conditioning:
    input:
        audio=lambda w: PLAN.group_audio(w.group),
        validation=VALIDATION,
        settings=SETTINGS,
    output:
        directory(f"{R}/speakers/{{group}}"),
    log:
        f"{R}/logs/speakers/{{group}}.log",
    benchmark:
        f"{R}/benchmarks/speakers/{{group}}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        speakers=lambda w: PLAN.speaker_groups[w.group],
    script:
        "../scripts/speaker_conditioning.py"
