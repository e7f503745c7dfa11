"""An import killed with SIGKILL halfway, then run again, ends with every line stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import Completion, MetadataChange

from .helpers import ROOT, TEST_SECRET_KEY, completion_body

LINES = 20_000  # enough that even a fast import is still running when it is killed


def import_process(database_url: str, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "webapp", "import", str(path)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def children(pid: int) -> list[int]:
    """Return the processes ``pid`` started (Linux: /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def running(pid: int) -> bool:
    """Return whether ``pid`` still runs (an ended process nobody has reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def stored() -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(Completion)) or 0


def test_import_killed_halfway_then_rerun(app, database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as out:
        for i in range(LINES):
            out.write(json.dumps(completion_body(f"crash-{i:05d}", created=1_700_000_000 + i, metadata={"i": str(i)})) + "\n")

    first = import_process(database_url, path)
    deadline = time.monotonic() + 60
    while stored() < LINES // 4:
        assert first.poll() is None, "the import finished before it could be killed: make the file bigger"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    readers = children(first.pid)  # the process reading the input for it
    assert readers
    first.send_signal(signal.SIGKILL)
    first.wait()
    # Its reading process stops too (the pipe it writes to is gone): nothing is left running.
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in readers):
        assert time.monotonic() < deadline, "the reading process outlived the killed import"
        time.sleep(0.05)
    partial = stored()
    assert 0 < partial < LINES
    print(f"\nfigures: import of {LINES} lines killed with SIGKILL after {partial} were committed")

    second = import_process(database_url, path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err.decode()
    # What the killed run committed is found unchanged; nothing of it is written twice.
    assert f"{LINES - partial} new or changed, {partial} unchanged" in out.decode()

    db.session.rollback()
    rows = dict(db.session.execute(select(Completion.id, Completion.metadata_map)).all())
    assert len(rows) == LINES
    assert all(rows[f"crash-{i:05d}"] == {"i": str(i)} for i in range(LINES))
    changes = db.session.execute(select(MetadataChange.completion_id, func.count()).group_by(MetadataChange.completion_id)).all()
    assert len(changes) == LINES and all(count == 1 for _cid, count in changes)
