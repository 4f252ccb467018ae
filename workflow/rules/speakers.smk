"""Speaker conditioning: once per distinct speaker prompt file, shared by all its rows."""


rule speaker_conditioning:
    input:
        audio=lambda w: PLAN.speakers[w.speaker],
        validation=VALIDATION,
        settings=SETTINGS,
    output:
        tensors=f"{R}/speakers/{{speaker}}.safetensors",
        status=f"{R}/speakers/{{speaker}}.json",
    log:
        f"{R}/logs/speakers/{{speaker}}.log",
    benchmark:
        f"{R}/benchmarks/speakers/{{speaker}}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/speaker_conditioning.py"
