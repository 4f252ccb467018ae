"""Report: report.html (self-contained), metrics.tsv and audio/ for the rows of the table."""


rule report:
    input:
        table=f"{R}/table.json",
        specs=[PLAN.spec_path(row.id) for row in PLAN.table.rows],
        wav=needed("wav"),
        render=needed("render.json"),
        score=needed("score.json"),
        check=CHECK,
        validation=VALIDATION,
    output:
        html=f"{R}/report.html",
        metrics=f"{R}/metrics.tsv",
        audio=directory(f"{R}/audio"),
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    localrule: True
    conda:
        CONDA_ENV
    params:
        mel_images=config["report"]["mel_images"],
    script:
        "../scripts/report.py"
