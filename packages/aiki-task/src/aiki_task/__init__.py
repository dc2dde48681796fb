"""Task definitions (`@task`) and their execution inside a workflow run."""

from __future__ import annotations

from aiki_task.__about__ import __version__ as __version__
from aiki_task._context import TaskContext as TaskContext
from aiki_task._task import Task as Task
from aiki_task._task import task as task

__all__ = ("Task", "TaskContext", "__version__", "task")

for _obj in (Task, TaskContext, task):
    _obj.__module__ = __name__
