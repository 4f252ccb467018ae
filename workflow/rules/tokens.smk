"""Semantic tokens: the GPT generates codes and latents for a whole batch in one job."""


rule semantic_tokens:
    input:
        specs=lambda w: PLAN.batch_specs(w.batch),
        speakers=lambda w: PLAN.batch_speaker_dirs(w.batch),
        emotion=batch_file("emotion.safetensors"),
        emotion_status=batch_file("emotion.json"),
        text=batch_file("text.json"),
    output:
        tensors=batch_file("tokens.safetensors"),
        status=batch_file("tokens.json"),
    log:
        f"{R}/logs/tokens/{{batch}}.log",
    benchmark:
        f"{R}/benchmarks/tokens/{{batch}}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/semantic_tokens.py"
