"""Task definitions (`@task`), their execution inside a workflow run, and task services.

A workflow calls a task with `await my_task.start(run, payload)`; the task runs in the
worker, or, for a `RemoteTask` (`my_task.remote()`, `remote_task(...)`), on the task
endpoint that serves it, whose app `asgi_app` makes.
"""

from __future__ import annotations

from aiki_task.__about__ import __version__ as __version__
from aiki_task._context import TaskContext as TaskContext
from aiki_task._remote import RemoteTask as RemoteTask
from aiki_task._remote import remote_task as remote_task
from aiki_task._service import asgi_app as asgi_app
from aiki_task._task import Task as Task
from aiki_task._task import task as task

__all__ = ("RemoteTask", "Task", "TaskContext", "__version__", "asgi_app", "remote_task", "task")

for _obj in (RemoteTask, Task, TaskContext, asgi_app, remote_task, task):
    _obj.__module__ = __name__
