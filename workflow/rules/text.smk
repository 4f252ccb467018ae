"""Text front-end: normalise, tokenize and segment every row of a batch, on the CPU.

A job of its own, so that GPU jobs never spend GPU time on text normalisation (the Chinese
grammar takes 20-35 s to compile on a new machine) and need no normaliser installed.
"""


rule text_frontend:
    input:
        specs=lambda w: PLAN.batch_specs(w.batch),
        check=CHECK,
    output:
        status=batch_file("text.json"),
    log:
        f"{R}/logs/text/{{batch}}.log",
    benchmark:
        f"{R}/benchmarks/text/{{batch}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    script:
        "../scripts/text_frontend.py"
