"""Job states for a Slurm sweep's launcher on a cluster without accounting (small and one-node clusters).

submitit polls ``sacct``; with accounting off every poll fails with a warning (printed three times), and a job
that ends without a result (``scancel``, a crash of the node) is waited for forever. With ``install()`` the
launcher probes ``sacct`` once; if it fails, job states come from ``squeue --states=all`` instead, and one line
says so. squeue forgets a job ``MinJobAge`` seconds after it ends: a job of the sweep that it no longer lists and
that left no result counts as ended (state ``ENDED``), so the sweep stops with submitit's error naming the job.

Every use of submitit's private attributes is here (as ``engines/zero_internals.py`` holds DeepSpeed's): the watcher's
``_make_command``, ``_registered``, ``_finished`` and ``_delay_s``, and the class attribute ``SlurmJob.watcher`` that
``install`` replaces; ``tests/test_slurm.py`` runs them on a real one-node Slurm.
"""

from __future__ import annotations

import subprocess

from submitit.slurm import slurm

from trustregion.console import say

SACCT_FIELDS = "JobID|State|NodeList"  # the header submitit's parser expects


class QueueWatcher(slurm.SlurmInfoWatcher):
    """submitit's watcher, falling back to squeue when sacct cannot answer."""

    accounting: bool | None = None  # None: not probed yet

    def _probe_accounting(self) -> bool:
        try:
            out = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = repr(e)
        else:
            if out.returncode == 0:
                return True
            reason = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit code {out.returncode}"
        say(f"sacct cannot answer ({reason}): the sweep's job states come from squeue")
        return False

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None:
            return None
        if self.accounting is None:
            self.accounting = self._probe_accounting()
        return command if self.accounting else ["squeue", "--states=all", "--noheader", "--format=%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self.accounting:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info(f"{SACCT_FIELDS}\n{text}")
        for job in self._registered - self._finished:
            if job not in info:  # past MinJobAge, or never listed: it has ended
                info[job] = {"JobID": job, "State": "ENDED", "NodeList": ""}
        return info


def install() -> None:
    """Make every Slurm job of this process (the launcher's) use QueueWatcher. Idempotent."""
    current = slurm.SlurmJob.watcher
    if not isinstance(current, QueueWatcher):
        slurm.SlurmJob.watcher = QueueWatcher(delay_s=current._delay_s)
