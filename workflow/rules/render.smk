"""Render: DiT (s2mel) and the BigVGAN vocoder turn a batch's tokens into 22.05 kHz WAVs."""


rule render:
    input:
        specs=lambda w: PLAN.batch_specs(w.batch),
        speakers=lambda w: PLAN.batch_speaker_dirs(w.batch),
        tokens=batch_file("tokens.safetensors"),
        tokens_status=batch_file("tokens.json"),
        render_settings=RENDER_SETTINGS,
    output:
        wav=directory(batch_file("wav")),
        status=batch_file("render.json"),
    log:
        f"{R}/logs/render/{{batch}}.log",
    benchmark:
        f"{R}/benchmarks/render/{{batch}}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/render.py"
