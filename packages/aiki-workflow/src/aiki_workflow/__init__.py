"""Workflow definitions, versions, the run context and content-addressed replay."""

from __future__ import annotations

from aiki_workflow.__about__ import __version__ as __version__
from aiki_workflow._run import WorkflowRun as WorkflowRun
from aiki_workflow._workflow import Workflow as Workflow
from aiki_workflow._workflow import WorkflowVersion as WorkflowVersion
from aiki_workflow._workflow import workflow as workflow

__all__ = ("Workflow", "WorkflowRun", "WorkflowVersion", "__version__", "workflow")

for _obj in (Workflow, WorkflowRun, WorkflowVersion, workflow):
    _obj.__module__ = __name__
