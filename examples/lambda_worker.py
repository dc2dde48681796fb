"""A serverless worker: the runs of one workflow, pushed by the server to AWS Lambda.

Deploy this module as a Lambda function (Python 3.11+, with
`pip install aiki-client aiki-task aiki-workflow "aiki-worker[lambda]"` in its
package), with `lambda_worker.handler` as its handler and a function URL or an API Gateway HTTP API
in front. Set three environment variables:

    AIKI_URL          the server, https://aiki.example.com
    AIKI_API_KEY      an API key of the namespace whose runs it executes
    AIKI_PUSH_SECRET  the secret the server showed when the endpoint was created

Then register the function's URL as a workflow endpoint of `greetings` version 1 (the
server pushes each queued run to it). The same `app` runs anywhere ASGI runs:
`uvicorn lambda_worker:app` on Cloud Run, say.
"""

from __future__ import annotations

import os

from aiki_client import Client
from aiki_task import task
from aiki_worker import asgi_app, lambda_handler
from aiki_workflow import WorkflowRun, workflow


@task("compose-greeting")
async def compose_greeting(name: str) -> str:
    """One task: its result is recorded, so a later push of the run does not redo it."""
    return f"hello {name}!"


greetings = workflow("greetings")


@greetings.v("1")
async def greetings_v1(run: WorkflowRun, name: str) -> str:
    """Greet `name` through the task."""
    return await compose_greeting.start(run, name)


def make_client() -> Client:
    """A client per event loop: a Lambda invocation may run on a loop of its own."""
    return Client(os.environ["AIKI_URL"], api_key=os.environ.get("AIKI_API_KEY"))


app = asgi_app(make_client, [greetings_v1], [os.environ["AIKI_PUSH_SECRET"]])
handler = lambda_handler(app)
