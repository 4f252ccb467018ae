"""Parse-time preparation: validate the texts table, write changed row specs, plan batches."""

from tts import jobs
from tts.table import TableError, read_frame

# A run killed on this machine (SIGKILL, power cut) left its locks: remove them so the same
# command resumes. Locks of a live run are kept (see tts.jobs.clear_stale_locks).
jobs.clear_stale_locks()

try:
    _frame, _ = read_frame(config["texts"])
except TableError as exc:
    raise WorkflowError(f"texts table rejected, nothing was run:\n{exc}") from None
validate(_frame, "../schemas/texts.schema.yaml", set_default=False)
try:
    PLAN = jobs.prepare(config)
except (TableError, ValueError) as exc:
    raise WorkflowError(f"cannot plan the run, nothing was run:\n{exc}") from None

R = PLAN.results
CHECK = f"{R}/checkpoints/{PLAN.set_hash}/check.json"
VALIDATION = f"{R}/checkpoints/{PLAN.set_hash}/validation.json"
SETTINGS = f"{R}/settings.json"
RENDER_SETTINGS = f"{R}/render_settings.json"
# Rules share one software environment (used with --sw-deployment-method conda).
CONDA_ENV = "../envs/indextts2.yaml"


wildcard_constraints:
    batch="b[0-9a-f]{12}",
    group="s[0-9a-f]{12}",


def batch_file(name):
    """Path pattern of a per-batch file (``{batch}`` stays a wildcard)."""
    return f"{R}/batches/{{batch}}/{name}"


def needed(name):
    """The per-batch file ``name`` of every batch holding a current row."""
    return [f"{R}/batches/{b}/{name}" for b in PLAN.needed_batches()]


onstart:
    jobs.record_run()


onsuccess:
    jobs.forget_run()
    jobs.print_summary(f"{R}/metrics.tsv")


onerror:
    jobs.forget_run()
    jobs.print_summary(f"{R}/metrics.tsv", failed_run=True)
