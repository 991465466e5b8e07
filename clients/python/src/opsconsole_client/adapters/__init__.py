"""Framework adapters: govern an agent built on a framework with one line per hook point.

Each framework has a module of its own, installed with the extra of the same name
(``pip install 'agent-ops-console-client[langgraph]'``, ``[openai-agents]``, ``[pydantic-ai]``):

- :mod:`opsconsole_client.adapters.langgraph`: ``governed_tools(run, tools)`` and
  ``governed_callbacks(run)`` (LangChain and LangGraph, ``ToolNode`` included);
- :mod:`opsconsole_client.adapters.openai_agents`: ``governed_tools(run, tools)`` and
  ``governed_hooks(run)`` (the OpenAI Agents SDK, its approval interruptions included);
- :mod:`opsconsole_client.adapters.pydantic_ai`: ``governed(run)``, a capability that wraps the
  agent's toolset and its model.

Every adapter asks the gateway before each tool call (with the model's ``tool_call_id`` as the
call's idempotency key, so a resumed agent spends nothing twice) and before each model call, and
reports what happened after. A refusal is :class:`~opsconsole_client.Stop`, a ``BaseException``
that the frameworks' error handling (LangGraph's ``handle_tool_errors``, the Agents SDK's
``failure_error_function``, pydantic-ai's retries) does not catch: it reaches the caller of the
agent, and the run context raises it again on exit whatever the agent returned. Each adapter
takes a :class:`~opsconsole_client.Run` or an :class:`~opsconsole_client.AsyncRun`; with a
``Run`` under asyncio the blocking calls go to a worker thread, so the event loop never waits.
"""
