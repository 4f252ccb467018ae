"""Checkpoints: every file present (first rule), then strict weight validation once per set.

Both outputs live under the set's fingerprint (a hash of every file's SHA-256, cached by size and
mtime), so validation reruns only when a weight file's content changes.
"""


rule check_checkpoints:
    output:
        CHECK,
    log:
        f"{R}/logs/check_checkpoints/{PLAN.set_hash}.log",
    benchmark:
        f"{R}/benchmarks/check_checkpoints/{PLAN.set_hash}.tsv"
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../scripts/check_checkpoints.py"


rule validate_weights:
    input:
        CHECK,
    output:
        VALIDATION,
    log:
        f"{R}/logs/validate_weights/{PLAN.set_hash}.log",
    benchmark:
        f"{R}/benchmarks/validate_weights/{PLAN.set_hash}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    script:
        "../scripts/validate_weights.py"
