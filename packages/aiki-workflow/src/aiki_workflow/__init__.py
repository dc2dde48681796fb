"""Workflow definitions, versions, the run context and content-addressed replay."""

from __future__ import annotations

from aiki_workflow.__about__ import __version__ as __version__
from aiki_workflow._children import ChildRun as ChildRun
from aiki_workflow._events import Event as Event
from aiki_workflow._events import EventResult as EventResult
from aiki_workflow._events import event as event
from aiki_workflow._hooks import SleepInfo as SleepInfo
from aiki_workflow._run import SleepResult as SleepResult
from aiki_workflow._run import WorkflowRun as WorkflowRun
from aiki_workflow._saga import Saga as Saga
from aiki_workflow._workflow import Workflow as Workflow
from aiki_workflow._workflow import WorkflowVersion as WorkflowVersion
from aiki_workflow._workflow import workflow as workflow

__all__ = (
    "ChildRun",
    "Event",
    "EventResult",
    "Saga",
    "SleepInfo",
    "SleepResult",
    "Workflow",
    "WorkflowRun",
    "WorkflowVersion",
    "__version__",
    "event",
    "workflow",
)

_PUBLIC: tuple[object, ...] = (ChildRun, Event, EventResult, Saga, SleepInfo, SleepResult)
for _obj in (*_PUBLIC, Workflow, WorkflowRun, WorkflowVersion, event, workflow):
    _obj.__module__ = __name__
