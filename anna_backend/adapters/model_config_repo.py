"""The model-config repository as a local bare git repo, written with git plumbing (no worktree).

Creating a task creates branch ``task/<task_id>`` with a commit of ``task.json``. Each run adds a commit
with ``task.json`` and ``run.json`` (exactly ``RunConfig.to_json()``) and the annotated tag
``run/<run_id>``. The pipeline reads its configuration from the tag alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from anna_backend.domain.errors import NotFound
from anna_backend.domain.model import Task
from anna_backend.service_layer.ports import ModelConfigRepo
from anna_models.config import RunConfig

COMMITTER = ("ANNA", "anna@localhost")


class GitError(RuntimeError):
    """A git command failed; the message holds its stderr."""


def task_json(task: Task) -> str:
    return json.dumps({
        "id": task.id, "name": task.name, "task_type": task.task_type, "metric": task.metric,
        "domains": task.domains, "description": task.description, "created_by": task.created_by,
        "created_at": task.created_at.isoformat(),
    }, indent=2, sort_keys=True) + "\n"


class GitModelConfigRepo(ModelConfigRepo):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one writer per process; update-ref's old value guards across them
        if not (self.path / "HEAD").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            self._git("init", "--bare", "--quiet", str(self.path), cwd=self.path.parent, bare_dir=False)

    # ------------------------------------------------------------------------------------------ plumbing

    def _env(self, author: str | None) -> dict[str, str]:
        name = author or COMMITTER[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update({
            "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": f"{name}@anna.local",
            "GIT_COMMITTER_NAME": COMMITTER[0], "GIT_COMMITTER_EMAIL": COMMITTER[1],
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
        })
        return env

    def _git(self, *args: str, stdin: str | None = None, author: str | None = None, cwd: Path | None = None,
             bare_dir: bool = True, check: bool = True) -> str:
        command = ["git", *(["--git-dir", str(self.path)] if bare_dir else []), *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=self._env(author),
                              cwd=cwd or self.path)
        if check and done.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip() if done.returncode == 0 else ""

    def _blob(self, content: str) -> str:
        return self._git("hash-object", "-w", "--stdin", stdin=content)

    def _tree(self, files: dict[str, str]) -> str:
        entries = "".join(f"100644 blob {self._blob(content)}\t{name}\n"
                          for name, content in sorted(files.items()))
        return self._git("mktree", stdin=entries)

    def _commit(self, tree: str, parent: str | None, message: str, author: str) -> str:
        parents = ["-p", parent] if parent else []
        return self._git("commit-tree", tree, *parents, stdin=message, author=author)

    def _head(self, ref: str) -> str | None:
        return self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False) or None

    # ----------------------------------------------------------------------------------------- interface

    def create_task(self, task: Task) -> str:
        with self._lock:
            tree = self._tree({"task.json": task_json(task)})
            commit = self._commit(tree, None, f"task {task.name}: created\n", task.created_by)
            # The database is the record: a branch left by a task row that was rolled back is overwritten.
            self._git("update-ref", "-m", f"task {task.name}", f"refs/heads/{task.git_branch}", commit)
            return commit

    def record_run(self, task: Task, config: RunConfig, *, author: str) -> tuple[str, str]:
        tag = f"run/{config.run_id}"
        branch = f"refs/heads/{task.git_branch}"
        with self._lock:
            tree = self._tree({"task.json": task_json(task), "run.json": config.to_json()})
            for _ in range(5):  # another process may move the branch between reading and updating it
                parent = self._head(branch)
                commit = self._commit(tree, parent, f"run {config.run_id} of task {task.name}\n", author)
                try:
                    self._git("update-ref", "-m", tag, branch, commit, parent or "")
                    break
                except GitError:
                    continue
            else:
                raise GitError(f"could not advance {branch}: it keeps moving")
            self._git("tag", "-f", "-a", "-m", f"run {config.run_id} of task {task.name}", tag, commit,
                      author=author)
            return tag, commit

    def read_run_config(self, run_id: int) -> RunConfig:
        tag = f"run/{run_id}"
        text = self._git("cat-file", "blob", f"refs/tags/{tag}:run.json", check=False)
        if not text:
            raise NotFound(f"the model-config repo has no tag {tag} with run.json")
        return RunConfig.from_json(text)

    def tag_commit(self, tag: str) -> str:
        commit = self._head(f"refs/tags/{tag}")
        if commit is None:
            raise NotFound(f"the model-config repo has no tag {tag}")
        return commit

    def read_file(self, ref: str, name: str) -> dict[str, Any]:
        """A JSON file at a ref (for inspection and tests)."""
        return json.loads(self._git("cat-file", "blob", f"{ref}:{name}"))
