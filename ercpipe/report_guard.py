"""Snakemake's `--report`, refused while jobs are pending and written through a staged copy.

Here rather than in the workflow's rules: Snakemake prints an error raised from a Snakefile's code with the stack
frames that lead to it, and one raised here as a command-line error (`CliException`) with its message alone."""
from __future__ import annotations

import collections

from snakemake.exceptions import CliException

from ercpipe.io.atomic import staged_attribute_path


def pending_jobs_problem(dag) -> str | None:
    """Why a report cannot be made now, or None: the jobs still to run for the current config and targets."""
    pending = [job for job in dag.needrun_jobs() if job.output]  # not `all`, which only collects targets
    if not pending:
        return None
    rules = collections.Counter(job.rule.name for job in pending)
    examples = [f"{job.rule.name}: {job.output[0]}" for job in pending[:3]]
    return (f"--report: {len(pending)} job(s) have not run, failed, or must run again for the current config "
            f"({', '.join(f'{rule} x{n}' for rule, n in rules.most_common())}; e.g. {'; '.join(examples)}). "
            "A report now would show outputs of earlier settings as current, or stop on a missing file. Run the "
            "same snakemake command without --report first (--keep-going finishes what can finish), or report "
            "only finished targets: snakemake <target files> --report FILE (`snakemake -n` lists the pending jobs).")


def refuse_reports_with_pending_jobs(auto_report):
    """Snakemake's --report embeds whatever files exist: after a changed setting it would show the results of the
    old one as current, and after a failed job it stops on a missing file without saying why. `create_report`
    imports `snakemake.report.auto_report` when it runs, after building the DAG; this wrapper looks at that DAG
    first and refuses while any job is still to run."""

    async def checked(dag, *args, **kwargs):
        problem = pending_jobs_problem(dag)
        if problem:
            raise CliException(problem)
        # auto_report(dag, report_plugin, report_settings, global_report_settings); the html/zip reporter opens
        # report_settings.path in place, so it writes a staged copy (a killed report keeps the last good one).
        settings = args[1] if len(args) > 1 else kwargs.get("report_settings")
        if getattr(settings, "path", None) is None:
            return await auto_report(dag, *args, **kwargs)
        with staged_attribute_path(settings):
            return await auto_report(dag, *args, **kwargs)

    checked.ercpipe_pending_check = True
    return checked
