"""Emotion conditioning for every row of a batch (emotion audio, vector or text)."""


rule emotion_conditioning:
    input:
        specs=lambda w: PLAN.batch_specs(w.batch),
        speakers=lambda w: PLAN.batch_speaker_dirs(w.batch),
        emotion_prompts=lambda w: PLAN.batch_emotion_prompt_dirs(w.batch),
        emo_audio=lambda w: PLAN.batch_emo_audio(w.batch),
        validation=VALIDATION,
        settings=SETTINGS,
    output:
        tensors=batch_file("emotion.safetensors"),
        status=batch_file("emotion.json"),
    log:
        f"{R}/logs/emotion/{{batch}}.log",
    benchmark:
        f"{R}/benchmarks/emotion/{{batch}}.tsv"
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/emotion_conditioning.py"
