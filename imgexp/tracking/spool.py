"""Tracking, middle layer (uses store.py): what could not be sent to the tracking server, kept on disk in
order until it can be.

A spool is a folder: ``spool.json`` (tracking URI, run id, how many operations were sent), ``journal.jsonl``
(one operation a line: metrics with their step and time, a file to store as an artifact, tags, the run's
end) and ``files/`` (the artifacts' local copies). While the server is down the tracker appends here;
when it answers again the spool is sent, oldest first. If it is still down when the run ends, send it
later with::

    python -m imgexp.tracking.spool <spool folder>
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from imgexp.redact import mask
from imgexp.tracking.store import drop_checkpoints, few_http_retries, log_inputs, set_tags


class Spool:
    def __init__(self, folder: str | Path, uri: str, run_id: str) -> None:
        self.folder = Path(folder)
        self.journal = self.folder / "journal.jsonl"
        self.meta_path = self.folder / "spool.json"
        if self.meta_path.exists():
            self.meta = json.loads(self.meta_path.read_text())
        else:
            self.meta = {"uri": mask(uri), "run_id": run_id, "sent": 0}  # a password: give --uri to send

    @classmethod
    def open(cls, folder: str | Path) -> "Spool":
        meta = json.loads((Path(folder) / "spool.json").read_text())
        return cls(folder, meta["uri"], meta["run_id"])

    def _save_meta(self) -> None:
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta))
        os.replace(tmp, self.meta_path)

    def operations(self) -> list[dict]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines() if line.strip()]

    def pending(self) -> int:
        return max(0, len(self.operations()) - self.meta["sent"])

    def discard(self) -> None:
        """Remove the folder once everything in it was sent."""
        if self.folder.exists() and self.pending() == 0:
            shutil.rmtree(self.folder, ignore_errors=True)

    def append(self, op: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.meta_path.exists():
            self._save_meta()
        with open(self.journal, "a") as f:
            f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_file(self, local: str | Path, artifact_path: Optional[str]) -> None:
        """Copy ``local`` now (it may change before it is sent) and journal it; a later copy of the same
        artifact replaces the earlier one."""
        name = Path(local).name
        dest = self.folder / "files" / (artifact_path or ".") / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, dest)
        self.append({"op": "file", "file": str(dest.relative_to(self.folder)), "artifact_path": artifact_path})

    def send(self, client) -> int:
        """Send every pending operation through ``client`` in order, recording progress after each, so an
        outage midway resumes where it stopped. Returns how many were sent."""
        from mlflow.entities import Metric

        ops, run_id, sent = self.operations(), self.meta["run_id"], 0
        last_of = {op["file"]: i for i, op in enumerate(ops) if op["op"] == "file"}
        for i in range(self.meta["sent"], len(ops)):
            op = ops[i]
            if op["op"] == "metrics":
                client.log_batch(run_id, metrics=[Metric(k, v, op["ts"], op["step"] or 0)
                                                  for k, v in op["metrics"].items()])
            elif op["op"] == "file" and last_of[op["file"]] == i:  # the newest copy of an artifact only
                client.log_artifact(run_id, str(self.folder / op["file"]), op["artifact_path"])
            elif op["op"] == "tags":
                set_tags(client, run_id, op["tags"])
            elif op["op"] == "inputs":
                log_inputs(client, run_id, op["records"])
            elif op["op"] == "drop":
                drop_checkpoints(client, run_id, op["keep"])
            elif op["op"] == "end":
                client.set_terminated(run_id, op["status"])
            self.meta["sent"] = i + 1
            self._save_meta()
            sent += 1
        return sent


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgexp.tracking.spool",
                                     description="Send a run's spooled metrics and artifacts to its tracking server.")
    parser.add_argument("folder", help="the spool folder the run named")
    parser.add_argument("--uri", help="send to this tracking URI instead of the one the run used (whose "
                        "password, if it had one, is kept masked)")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    few_http_retries()  # a server still down: the error in seconds, not after minutes of retries
    spool = Spool.open(args.folder)
    uri = args.uri or spool.meta["uri"]
    pending = spool.pending()
    try:
        sent = spool.send(MlflowClient(uri))
    except Exception as err:  # noqa: BLE001 - one line, and the spool keeps what was not sent
        from imgexp.errors import describe

        print(f"imgexp: error: {mask(uri)}: {describe(err)} ({spool.pending()} operations still spooled)",
              file=sys.stderr)
        sys.exit(1)
    spool.discard()
    print(f"sent {sent} of {pending} spooled operations of run {spool.meta['run_id']} to {mask(uri)}")


if __name__ == "__main__":
    main()
