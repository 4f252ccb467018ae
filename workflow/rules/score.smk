"""Score: intelligibility (ASR word and character error rates) and speaker similarity."""


rule score:
    input:
        specs=lambda w: PLAN.batch_specs(w.batch),
        wav=batch_file("wav"),
        render_status=batch_file("render.json"),
        scoring=f"{R}/scoring.json",
        validation=VALIDATION,
    output:
        status=batch_file("score.json"),
    log:
        f"{R}/logs/score/{{batch}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{batch}}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/score.py"
